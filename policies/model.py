"""What the governor knows about one model, read from Ollama's ``/api/show`` and ``/api/tags``.

Policies size contexts from these facts, so every field is documented with where it comes from and
what ``None`` means. Parsing is forgiving on purpose: an older or newer Ollama, a GGUF that omits a
key, or a non-verbose ``/api/show`` (which blanks every array longer than 5 elements) must give
``None`` for what is unknown, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

LLAMA_SERVER_ENGINE_VERSION = (0, 30, 0)
"""First Ollama release that runs every GGUF model in llama.cpp's ``llama-server``
(docs/ollama-rules.md §2)."""

SWA_PERIOD_BY_ARCHITECTURE: Mapping[str, int] = {
    "gemma2": 2,
    "gemma3": 6,
    "gemma3n": 5,
    "gemma-embedding": 6,
    "cohere2": 4,
    "gpt-oss": 2,
}
"""llama.cpp's hard-coded sliding-window period per ``general.architecture``.

With period ``n`` layer ``il`` uses the sliding window when ``il % n < n - 1`` (llama.cpp
``set_swa_pattern``): gemma3 has 5 local layers then 1 global, gemma2 and gpt-oss alternate
starting with a local layer. An architecture missing here is treated as full attention on every
layer, which overestimates the KV cache: the safe direction for a governor.
"""

KV_FROM_START_BY_ARCHITECTURE: Mapping[str, int] = {"gemma3n": 20}
"""Layers with their own KV cache when llama.cpp hard-codes it instead of reading the GGUF."""

_VERSION_RE = re.compile(r"^\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")


class IncompleteModelFacts(ValueError):
    """The facts lack a value a computation needs; the message names it and how to get it."""


def parse_version(text: str) -> tuple[int, int, int]:
    """Turn ``/api/version``'s ``"0.33.0-rc2"`` into ``(0, 33, 0)`` so versions compare as tuples.

    A pre-release suffix is dropped, because a release candidate already runs the engine of the
    release it leads to. Missing minor or patch numbers count as 0. Anything that does not start
    with a number raises ``ValueError``.
    """
    match = _VERSION_RE.match(text)
    if match is None:
        raise ValueError(f"cannot read Ollama version {text!r}: expected MAJOR.MINOR.PATCH such as '0.32.15'")
    major, minor, patch = (int(part) if part else 0 for part in match.groups())
    return (major, minor, patch)


def uses_llama_server(version: tuple[int, int, int] | None) -> bool:
    """Whether this Ollama runs models in ``llama-server`` (0.30 and later).

    ``None`` (version unknown) and ``(0, 0, 0)`` (a development build from source, which reports
    no release number) are taken as the current engine.
    """
    if version is None or version == (0, 0, 0):
        return True
    return version >= LLAMA_SERVER_ENGINE_VERSION


def per_layer(value: int | Sequence[int] | None, block_count: int) -> tuple[int, ...]:
    """Expand a GGUF value that is either one number for all layers or one number per layer.

    ``head_count``, ``head_count_kv`` and ``feed_forward_length`` come in both shapes
    (docs/ollama-rules.md §6).
    Raises ``ValueError`` when the value is unknown or an array has the wrong length, as llama.cpp
    refuses such a model too.
    """
    if value is None:
        raise ValueError("per-layer value is unknown")
    if isinstance(value, int):
        return (value,) * block_count
    values = tuple(value)
    if len(values) != block_count:
        raise ValueError(f"expected {block_count} per-layer values, got {len(values)}")
    return values


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """One model's shape and size, as far as Ollama tells us.

    Build it with ``ModelFacts.from_show``. Every field but ``name`` may be ``None`` (or empty)
    when Ollama did not report it; the memory functions raise ``IncompleteModelFacts`` naming the
    field they missed.
    """

    name: str
    """The model name as the client wrote it, e.g. ``"gemma3:27b"``."""

    digest: str | None = None
    """Manifest digest from ``/api/tags``; changes when the model is re-pulled or re-created."""

    architecture: str | None = None
    """``general.architecture`` (``"gemma3"``, ``"llama"``...): the prefix of every other key."""

    context_length: int | None = None
    """Trained context length; Ollama clamps ``num_ctx`` to it."""

    block_count: int | None = None
    """Number of transformer layers."""

    embedding_length: int | None = None
    """Hidden size (``n_embd``)."""

    head_count: int | tuple[int, ...] | None = None
    """Attention (query) heads: one number, or one per layer."""

    head_count_kv: int | tuple[int, ...] | None = None
    """KV heads: one number, or one per layer. 0 marks a layer without a KV cache (recurrent,
    convolution or MLP-only blocks of lfm2 and nemotron_h). ``None`` when ``/api/show`` was not
    verbose and the array was blanked."""

    key_length: int | None = None
    """Per-head key size. Filled with ``embedding_length / head_count`` when the GGUF omits it,
    exactly as llama.cpp does."""

    value_length: int | None = None
    """Per-head value size; same default as ``key_length``."""

    key_length_swa: int | None = None
    """Per-head key size on sliding-window layers (gemma4); ``None`` means ``key_length``."""

    value_length_swa: int | None = None
    """Per-head value size on sliding-window layers (gemma4); ``None`` means ``value_length``."""

    sliding_window: int | None = None
    """Sliding-attention window in tokens; ``None`` (or a GGUF value of 0) means no SWA."""

    sliding_window_pattern: tuple[bool, ...] | None = None
    """Per-layer SWA flags from ``attention.sliding_window_pattern`` (True = sliding window).
    A scalar period in the GGUF is expanded to flags. ``None`` falls back to the architecture's
    built-in period (``SWA_PERIOD_BY_ARCHITECTURE``)."""

    shared_kv_layers: int | None = None
    """Trailing layers that reuse an earlier layer's KV cache (``attention.shared_kv_layers``,
    gemma3n and gemma4); they allocate none of their own."""

    vocab_size: int | None = None
    """Vocabulary size, from ``vocab_size``, the token list, or the ``token_embd`` tensor shape;
    it sizes the logits in the compute buffer."""

    weights_bytes: int | None = None
    """Size of the model's blobs on disk (``/api/tags`` ``size``), a close proxy for the weights
    that must sit in GPU memory."""

    capabilities: tuple[str, ...] = ()
    """``completion``, ``tools``, ``vision``, ``embedding``, ``thinking``...; empty if unknown."""

    modelfile_num_ctx: int | None = None
    """``PARAMETER num_ctx`` baked into the model; it beats Ollama's default but not a request."""

    family: str | None = None
    """``details.family``, e.g. ``"gemma3"``."""

    parameter_size: str | None = None
    """``details.parameter_size`` as Ollama prints it, e.g. ``"27.4B"``."""

    quantization_level: str | None = None
    """``details.quantization_level``, e.g. ``"Q4_K_M"``."""

    model_info: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )
    """The raw ``model_info`` map (read-only, tokenizer arrays dropped), for policies that need a
    key not modelled here."""

    @classmethod
    def from_show(
        cls,
        name: str,
        show: Mapping[str, Any],
        tags_entry: Mapping[str, Any] | None = None,
    ) -> ModelFacts:
        """Read the facts from an ``/api/show`` body and, optionally, the model's ``/api/tags`` row.

        ``/api/tags`` supplies the digest and the on-disk size that ``/api/show`` lacks. Ask
        ``/api/show`` with ``verbose: true`` to see per-layer arrays; without it they arrive as
        ``[]`` or ``null`` and the matching fields stay ``None``.
        """
        tags: Mapping[str, Any] = tags_entry if isinstance(tags_entry, Mapping) else {}
        info = _mapping(show.get("model_info"))
        details = _mapping(show.get("details"))
        tags_details = _mapping(tags.get("details"))

        architecture = _as_str(info.get("general.architecture")) or _as_str(details.get("family"))
        prefix = f"{architecture}." if architecture else None

        def key(suffix: str) -> Any:
            return info.get(prefix + suffix) if prefix else None

        block_count = _as_int(key("block_count"))
        embedding_length = _as_int(key("embedding_length")) or _as_int(tags_details.get("embedding_length"))
        head_count = _as_int_or_layers(key("attention.head_count"))
        head_dim_default = _default_head_dim(embedding_length, head_count)

        sliding_window = _as_int(key("attention.sliding_window"))
        if sliding_window is not None and sliding_window <= 0:
            sliding_window = None

        capabilities = _as_str_tuple(show.get("capabilities")) or _as_str_tuple(tags.get("capabilities"))

        return cls(
            name=name,
            digest=_as_str(tags.get("digest")),
            architecture=architecture,
            context_length=_as_int(key("context_length")) or _as_int(tags_details.get("context_length")),
            block_count=block_count,
            embedding_length=embedding_length,
            head_count=head_count,
            head_count_kv=_head_count_kv(info, prefix, head_count),
            key_length=_as_int(key("attention.key_length")) or head_dim_default,
            value_length=_as_int(key("attention.value_length")) or head_dim_default,
            key_length_swa=_as_int(key("attention.key_length_swa")),
            value_length_swa=_as_int(key("attention.value_length_swa")),
            sliding_window=sliding_window,
            sliding_window_pattern=_swa_pattern(key("attention.sliding_window_pattern"), block_count),
            shared_kv_layers=_as_int(key("attention.shared_kv_layers")),
            vocab_size=_vocab_size(info, prefix, show.get("tensors")),
            weights_bytes=_as_int(tags.get("size")),
            capabilities=capabilities,
            modelfile_num_ctx=_modelfile_num_ctx(show),
            family=_as_str(details.get("family")) or _as_str(tags_details.get("family")),
            parameter_size=_as_str(details.get("parameter_size"))
            or _as_str(tags_details.get("parameter_size")),
            quantization_level=_as_str(details.get("quantization_level"))
            or _as_str(tags_details.get("quantization_level")),
            model_info=MappingProxyType(
                {
                    info_key: value
                    for info_key, value in info.items()
                    if not (str(info_key).startswith("tokenizer.") and isinstance(value, list))
                }
            ),
        )

    def is_swa_layer(self, il: int) -> bool:
        """Whether layer ``il`` keeps only a sliding window of KV cells.

        Order of evidence, as in llama.cpp: no window means no SWA; the GGUF's per-layer pattern
        wins; otherwise the architecture's built-in period. Unknown architectures get full
        attention everywhere (larger cache, the safe side).
        """
        if self.sliding_window is None:
            return False
        if self.sliding_window_pattern is not None:
            return il < len(self.sliding_window_pattern) and self.sliding_window_pattern[il]
        period = SWA_PERIOD_BY_ARCHITECTURE.get(self.architecture or "")
        if period is None:
            return False
        return _in_swa_period(il, period)

    def has_own_kv(self, il: int) -> bool:
        """Whether layer ``il`` allocates a KV cache instead of reusing an earlier layer's.

        gemma3n and gemma4 share the cache of their last layers (``shared_kv_layers``); a
        ``head_count_kv`` of 0 is handled by the caller since it needs the per-layer array.
        """
        if self.block_count is None:
            return True
        kv_from_start = KV_FROM_START_BY_ARCHITECTURE.get(self.architecture or "")
        if self.shared_kv_layers is not None and self.shared_kv_layers > 0:
            kv_from_start = self.block_count - self.shared_kv_layers
        return kv_from_start is None or il < kv_from_start


def _in_swa_period(il: int, period: int) -> bool:
    """llama.cpp ``set_swa_pattern``: period 0 means every layer, else all but the last of each."""
    return period == 0 or il % period < period - 1


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _as_int(value: Any) -> int | None:
    """A JSON number that is a whole, non-negative number; every count and size here is one.

    ``10.0`` counts, because some converters write counts as floats; ``true`` does not.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value >= 0:
        return value
    return None


def _as_int_or_layers(value: Any) -> int | tuple[int, ...] | None:
    """A scalar, or a per-layer array; an empty or blanked array (non-verbose show) is unknown."""
    scalar = _as_int(value)
    if scalar is not None:
        return scalar
    if isinstance(value, list) and value:
        layers = tuple(_as_int(item) for item in value)
        if all(item is not None for item in layers):
            return tuple(item for item in layers if item is not None)
    return None


def _head_count_kv(
    info: Mapping[str, Any], prefix: str | None, head_count: int | tuple[int, ...] | None
) -> int | tuple[int, ...] | None:
    """KV heads; a GGUF without the key is plain multi-head attention, so it equals head_count.

    A key that is present but blanked (``null`` or ``[]`` from a non-verbose show) stays unknown.
    """
    if prefix is None:
        return None
    name = prefix + "attention.head_count_kv"
    if name not in info:
        return head_count
    return _as_int_or_layers(info[name])


def _as_str_tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def _default_head_dim(embedding_length: int | None, head_count: int | tuple[int, ...] | None) -> int | None:
    """llama.cpp's ``n_embd / n_head(0)`` fallback for ``key_length`` and ``value_length``."""
    first_head_count = head_count[0] if isinstance(head_count, tuple) else head_count
    if embedding_length is None or not first_head_count:
        return None
    return embedding_length // first_head_count


def _swa_pattern(value: Any, block_count: int | None) -> tuple[bool, ...] | None:
    """Per-layer flags from a bool array, or from a scalar period when the layer count is known."""
    if isinstance(value, list) and value:
        if all(isinstance(item, bool | int) for item in value):
            return tuple(bool(item) for item in value)
        return None
    period = _as_int(value)
    if period is None or period < 0 or block_count is None:
        return None
    return tuple(_in_swa_period(il, period) for il in range(block_count))


def _vocab_size(info: Mapping[str, Any], prefix: str | None, tensors: Any) -> int | None:
    """Vocabulary size from the explicit key, the token list (verbose only) or the embedding."""
    explicit = _as_int(info.get(prefix + "vocab_size")) if prefix else None
    if explicit:
        return explicit
    tokens = info.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and tokens:
        return len(tokens)
    if isinstance(tensors, list):
        for tensor in tensors:
            if isinstance(tensor, Mapping) and tensor.get("name") == "token_embd.weight":
                shape = tensor.get("shape")
                if isinstance(shape, list) and len(shape) == 2:
                    return _as_int(shape[1])
    return None


_NUM_CTX_PARAMETER_RE = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)
_NUM_CTX_MODELFILE_RE = re.compile(r"^\s*PARAMETER\s+num_ctx\s+(\d+)\s*$", re.MULTILINE | re.I)


def _modelfile_num_ctx(show: Mapping[str, Any]) -> int | None:
    """``num_ctx`` from the ``parameters`` text (``"%-30s %#v"`` lines), else the Modelfile."""
    for text, pattern in (
        (show.get("parameters"), _NUM_CTX_PARAMETER_RE),
        (show.get("modelfile"), _NUM_CTX_MODELFILE_RE),
    ):
        if isinstance(text, str):
            found = pattern.findall(text)
            if found:
                return int(found[-1])
    return None
