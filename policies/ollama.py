"""What a real Ollama does with a request, as pure functions of the numbers it sees.

A governor that rewrites ``num_ctx`` has to predict Ollama: which context a request really gets,
whether it reloads the model, how many slots it opens, what it does with a prompt that does not
fit, and when its own memory estimate makes it evict another model. Each rule here names where it
lives in Ollama's source (github.com/ollama/ollama at v0.33.0-rc2, commit fb30760) or in the
exchanges recorded from that release (``ollama-transcripts/v0.33.0-rc2/``); ``docs/ollama-rules.md``
lists them with their citations.

Versions are ``(major, minor, patch)`` tuples from ``policies.model.parse_version``; ``None`` (not
known) and ``(0, 0, 0)`` (a build from source) mean the newest rules. Everything is arithmetic on
plain values: no I/O, no clocks, no ModelFacts (``policies.memory`` applies these to a model).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from policies.model import uses_llama_server
from policies.records import cheap_init

Version = tuple[int, int, int]

_MIB = 1 << 20
_GIB = 1 << 30
_UINT64 = 1 << 64
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# -- the context a request gets --------------------------------------------------------------

MIN_NUM_CTX = 4
"""``Scheduler.getRunner`` raises any smaller ``num_ctx`` (0 and negatives included) to 4."""

VISION_MIN_NUM_CTX = 2048
"""``getRunner``: a model with the ``vision`` capability gets at least 2048 (0.30 and later)."""

VRAM_TIERS_VERSION: Version = (0, 15, 5)
"""First release whose default context depends on the GPUs' total memory."""

VRAM_TIERS: tuple[tuple[int, int], ...] = ((47 * _GIB, 262144), (23 * _GIB, 32768))
"""``(total VRAM at least, default num_ctx)``, from ``server/routes.go`` ``Serve``; the documented
48 and 24 GiB are lowered by 1 GiB in code "to account for small differences"."""

VRAM_TIER_FLOOR_NUM_CTX = 4096
"""The default below the lowest tier, and on a host without GPUs (``total_vram="0 B"``)."""


def vram_default_num_ctx(
    total_vram_bytes: int | Sequence[int],
    *,
    gpu_overhead_bytes: int = 0,
    version: Version | None = None,
) -> int:
    """The server-wide automatic ``num_ctx`` Ollama computes once at startup.

    From 0.15.5: ``Σ (TotalMemory - OLLAMA_GPU_OVERHEAD)`` over the GPUs picks a tier
    (``VRAM_TIERS``), else 4096. Pass one total per GPU; a single int is one GPU, and 0 (or an
    empty sequence) a CPU-only host. The sum is Go ``uint64`` arithmetic, so an overhead larger
    than a GPU wraps round to a huge total and the top tier, as Ollama does. Before: 4096 from
    0.6.7 to 0.15.4, 2048 up to 0.6.6 (``OLLAMA_CONTEXT_LENGTH``'s old defaults).
    """
    if not _at_least(version, VRAM_TIERS_VERSION):
        return 4096 if _at_least(version, (0, 6, 7)) else 2048
    if isinstance(total_vram_bytes, int):
        totals: Sequence[int] = (total_vram_bytes,) if total_vram_bytes > 0 else ()
    else:
        totals = total_vram_bytes
    total = sum((gpu_total - gpu_overhead_bytes) % _UINT64 for gpu_total in totals) % _UINT64
    for floor_bytes, num_ctx in VRAM_TIERS:
        if total >= floor_bytes:
            return num_ctx
    return VRAM_TIER_FLOOR_NUM_CTX


def default_num_ctx(
    version: Version | None,
    total_vram_bytes: int | Sequence[int],
    *,
    context_length_env: int | None = None,
    modelfile_num_ctx: int | float | None = None,
    trained_ctx: int | None = None,
    vision: bool = False,
    gpu_overhead_bytes: int = 0,
) -> int:
    """The context a request that names no ``num_ctx`` is loaded with.

    Precedence (``server/routes.go`` ``modelOptions``): a Modelfile ``PARAMETER num_ctx`` beats
    ``OLLAMA_CONTEXT_LENGTH``, which beats the VRAM tier; ``OLLAMA_CONTEXT_LENGTH=0`` means unset.
    The ``api.DefaultOptions`` layer carries the env value (or the tier), and the Modelfile's
    options are applied over it. Then the floors and the clamp of ``loaded_num_ctx`` apply.
    """
    if modelfile_num_ctx is not None:
        value: int | float = modelfile_num_ctx
    elif context_length_env:
        value = context_length_env
    else:
        value = vram_default_num_ctx(total_vram_bytes, gpu_overhead_bytes=gpu_overhead_bytes, version=version)
    return loaded_num_ctx(value, trained_ctx, vision=vision, version=version)


def loaded_num_ctx(
    requested: int | float,
    trained_ctx: int | None,
    *,
    vision: bool = False,
    version: Version | None = None,
    saturating_float_conversion: bool = False,
) -> int:
    """The per-slot ``num_ctx`` the runner really loads for an explicit value.

    ``Options.FromMap`` turns a JSON number into ``int64(value)``, truncating toward zero
    (8192.5 loads 8192, error_numctx_float_8192_5.txt); ``getRunner`` raises anything below 4 to 4
    (``num_ctx: 1`` and ``0`` load ``-c 4``, numctx_1.txt, ps_after_numctx_1.txt) and, from 0.30,
    a vision model to 2048; the load clamps to the trained length with WARN "requested context
    size too large for model" (llama-tiny asked for 32768 loads 8192, memory-matrix.txt).

    ``1e30`` is out of int64's range, where Go's conversion is implementation-defined: on amd64
    (CVTTSD2SI) it yields the "integer indefinite" MinInt64, which the floor raises to 4, so the
    recorded load is ``-c 4`` (error_numctx_1e30.txt, server-logs/a-205032.log). arm64 saturates
    to MaxInt64 instead, which clamps to the trained length: pass
    ``saturating_float_conversion=True`` to model that host. A bool is refused as Ollama refuses
    it (500 "option "num_ctx" must be of type integer").
    """
    value = _go_int(requested, "num_ctx", saturating=saturating_float_conversion)
    value = max(value, MIN_NUM_CTX)
    if vision and uses_llama_server(version):
        value = max(value, VISION_MIN_NUM_CTX)
    if trained_ctx is not None and trained_ctx > 0:
        value = min(value, trained_ctx)
    return value


# -- reloads ----------------------------------------------------------------------------------

DEFAULT_NUM_BATCH = 512
"""``api.DefaultOptions`` ``NumBatch``; what an automatic batch compares as in ``needsReload``."""

DEFAULT_NUM_KEEP = 4
"""``api.DefaultOptions`` ``NumKeep``: "a minimal num_keep to avoid issues on context shifts"."""

NO_CONTEXT_SHIFT_ARCHITECTURES = frozenset({"deepseek2"})
"""``supportsContextShift`` is false only for these; every other model shifts by default."""


@cheap_init
@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """The load-time options (``api.Runner``) that decide whether a loaded runner can be reused.

    Each value is what Ollama holds after resolving defaults; the ``*_auto`` flags say the value
    came from Ollama's own choice rather than from a request, Modelfile or environment, because
    ``needsReload`` treats automatic-versus-automatic as equal whatever the values. ``keep_alive``
    is not here: it is never compared, so changing it never reloads.
    """

    num_ctx: int
    """Per-slot context, after the floors and (on the loaded side) the trained-length clamp."""
    num_ctx_auto: bool = False
    """No ``num_ctx`` in request or Modelfile and ``OLLAMA_CONTEXT_LENGTH`` unset."""
    num_batch: int = DEFAULT_NUM_BATCH
    """The loaded runner's real batch; for a request, 512 unless it or the Modelfile names one."""
    num_batch_auto: bool = True
    num_gpu: int = -1
    """Layers to offload; -1 lets llama.cpp ``--fit`` decide."""
    main_gpu: int | None = None
    use_mmap: bool | None = None
    use_mmap_auto: bool = False
    """The scheduler chose ``use_mmap`` itself (it logs "disabling mmap for llama-server load by
    default"); a request that leaves it unset then matches."""
    num_thread: int = 0
    context_shift: bool = True
    """The resolved ``shift`` (a launch flag, ``--context-shift``); ignored before 0.30."""


def runner_options(
    options: Mapping[str, Any] | None,
    modelfile_options: Mapping[str, Any] | None = None,
    *,
    server_default_num_ctx: int,
    context_length_env: int | None = None,
    trained_ctx: int | None = None,
    vision: bool = False,
    shift: bool | None = None,
    architecture: str | None = None,
    embedding: bool = False,
    version: Version | None = None,
) -> RunnerOptions:
    """The ``RunnerOptions`` a request asks for: its ``options`` over the Modelfile's over defaults.

    ``server_default_num_ctx`` is the VRAM tier (``vram_default_num_ctx``); ``shift`` is the
    request's top-level ``shift`` field. An embedding model's batch defaults to
    ``min(2048, num_ctx)`` and is then not automatic (``shouldApplyEmbeddingBatchDefault``). The
    trained-length clamp is applied from 0.30, where ``needsReload`` clamps; before, Ollama
    compared the requested values as they were. ``ValueError`` carries Ollama's own 500 message
    for a value of the wrong type.
    """
    request = options or {}
    modelfile = modelfile_options or {}

    def pick(name: str) -> Any:
        """The value ``FromMap`` leaves: the request's, else the Modelfile's (a JSON null is skipped)."""
        value = request.get(name)
        return modelfile.get(name) if value is None else value

    def named(name: str) -> bool:
        """``usesAutomatic*`` asks whether the key is present at all, null or not."""
        return name in request or name in modelfile

    raw_ctx = pick("num_ctx")
    num_ctx_auto = not named("num_ctx") and not context_length_env
    if raw_ctx is None:
        raw_ctx = context_length_env or server_default_num_ctx
    clamp = trained_ctx if uses_llama_server(version) else None
    num_ctx = loaded_num_ctx(raw_ctx, clamp, vision=vision, version=version)

    raw_batch = pick("num_batch")
    num_batch_auto = not named("num_batch") and not embedding
    if raw_batch is not None:
        num_batch = _go_int(raw_batch, "num_batch")
    elif embedding:
        num_batch = min(2048, num_ctx) if num_ctx > 0 else 2048
    else:
        num_batch = DEFAULT_NUM_BATCH

    raw_gpu, raw_main, raw_thread = pick("num_gpu"), pick("main_gpu"), pick("num_thread")
    raw_mmap = pick("use_mmap")
    if raw_mmap is not None and not isinstance(raw_mmap, bool):
        raise ValueError('option "use_mmap" must be of type boolean')
    if shift is None:
        shift = (architecture or "") not in NO_CONTEXT_SHIFT_ARCHITECTURES
    return RunnerOptions(
        num_ctx=num_ctx,
        num_ctx_auto=num_ctx_auto,
        num_batch=num_batch,
        num_batch_auto=num_batch_auto,
        num_gpu=-1 if raw_gpu is None else _go_int(raw_gpu, "num_gpu"),
        main_gpu=None if raw_main is None else _go_int(raw_main, "main_gpu"),
        use_mmap=raw_mmap,
        num_thread=0 if raw_thread is None else _go_int(raw_thread, "num_thread"),
        context_shift=shift,
    )


def needs_reload(
    loaded: RunnerOptions,
    wanted: RunnerOptions,
    version: Version | None = None,
    *,
    trained_ctx: int | None = None,
) -> bool:
    """Whether Ollama replaces the loaded runner to serve a request that wants ``wanted``.

    From 0.30 (``server/sched.go`` ``needsReload``): the wanted context is clamped to the trained
    length; automatic versus automatic ``num_ctx`` or ``num_batch`` compares equal; an unset
    ``use_mmap`` matches an automatically chosen one; a wanted ``num_gpu < 0`` ignores the loaded
    one (but an explicit wanted layer count differs from a loaded -1); a different resolved context
    shift reloads; then the options must be equal. Before 0.30 the options were compared as they
    were, with only the ``num_gpu < 0`` rule. Runner health, adapters and projectors also reload
    in Ollama and are not modelled; ``keep_alive`` never does (reload_b_same_numctx_keep_alive.txt).
    """
    num_gpu = -1 if wanted.num_gpu < 0 else None  # both sides then compare as -1
    if not uses_llama_server(version):
        return _runner_fields(loaded, num_gpu=num_gpu) != _runner_fields(wanted, num_gpu=num_gpu)
    num_ctx = wanted.num_ctx
    if trained_ctx is not None and trained_ctx > 0:
        num_ctx = min(num_ctx, trained_ctx)
    if loaded.num_ctx_auto and wanted.num_ctx_auto:
        num_ctx = loaded.num_ctx
    num_batch = loaded.num_batch if loaded.num_batch_auto and wanted.num_batch_auto else wanted.num_batch
    use_mmap = loaded.use_mmap if loaded.use_mmap_auto and wanted.use_mmap is None else wanted.use_mmap
    if loaded.context_shift != wanted.context_shift:
        return True
    gpu = wanted.num_gpu if num_gpu is None else num_gpu
    normalised = (num_ctx, num_batch, gpu, wanted.main_gpu, use_mmap, wanted.num_thread)
    return _runner_fields(loaded, num_gpu=num_gpu) != normalised


def _runner_fields(
    options: RunnerOptions, *, num_gpu: int | None = None
) -> tuple[int, int, int, int | None, bool | None, int]:
    """The ``api.Runner`` fields ``reflect.DeepEqual`` compares (``num_gpu`` in place of the
    options' own when given)."""
    return (
        options.num_ctx,
        options.num_batch,
        options.num_gpu if num_gpu is None else num_gpu,
        options.main_gpu,
        options.use_mmap,
        options.num_thread,
    )


# -- slots and models ---------------------------------------------------------------------------

SINGLE_SLOT_ARCHITECTURES = frozenset(
    {"mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2", "lfm2moe"}
)
"""``model.SingleParallelArchitectures``: always one slot, whatever ``OLLAMA_NUM_PARALLEL`` says
(every ``nemotron_h*`` family too)."""


def num_parallel(architecture: str | None, capabilities: Sequence[str], configured: int) -> int:
    """The slot count Ollama loads a model with (``server/sched.go`` ``load``).

    ``max(OLLAMA_NUM_PARALLEL, 1)``, forced to 1 for a model without the ``completion``
    capability (embedding models) and for ``SINGLE_SLOT_ARCHITECTURES`` and ``nemotron_h*``.
    Unknown capabilities (empty) are not taken as "no completion". Since 0.10 the configured
    default is 1 (before, 0 meant an automatic 4 or 1, not modelled).
    """
    name = architecture or ""
    if name in SINGLE_SLOT_ARCHITECTURES or name.startswith("nemotron_h"):
        return 1
    if capabilities and "completion" not in capabilities:
        return 1
    return max(configured, 1)


MODELS_PER_GPU = 3
"""``defaultModelsPerGPU``: the automatic ``OLLAMA_MAX_LOADED_MODELS`` per GPU."""


def max_loaded_models(configured: int, gpu_count: int) -> int:
    """How many models Ollama keeps loaded before it unloads one to make room.

    ``OLLAMA_MAX_LOADED_MODELS`` when positive; 0 means automatic: 3 per GPU, 3 on a CPU-only
    host (``processPending``: ``defaultModelsPerGPU * max(len(gpus), 1)``).
    """
    if configured > 0:
        return configured
    return MODELS_PER_GPU * max(gpu_count, 1)


# -- a prompt longer than the context -----------------------------------------------------------


class PromptOutcome(enum.Enum):
    """What Ollama did to a prompt, as a value a program can match."""

    FITS = "fits"
    """Evaluated whole."""
    MESSAGES_DROPPED = "messages_dropped"
    """Chat: oldest non-system messages left out, and what is left fits."""
    CUT = "cut"
    """Kept ``num_keep`` tokens and the end, the middle discarded (WARN "truncating input prompt")."""
    REJECTED = "rejected"
    """HTTP 400: by Ollama (``shift`` false) or by llama-server (``truncate`` false)."""


@dataclass(frozen=True, slots=True)
class PromptFate:
    """The fate of one prompt: what happened, the HTTP status, and what the runner evaluates."""

    outcome: PromptOutcome
    status: int
    """200, or 400 when rejected."""
    evaluated_tokens: int
    """Prompt tokens the runner processes (``prompt_eval_count`` on a cold cache); 0 if rejected."""
    dropped_messages: int = 0
    """Chat messages left out before rendering; the response says nothing of them."""
    rejected_by: Literal["ollama", "llama-server"] | None = None


def prompt_fate(
    endpoint: str,
    prompt_tokens: int,
    num_ctx: int,
    *,
    truncate: bool = True,
    num_keep: int = DEFAULT_NUM_KEEP,
    shift: bool = True,
    adds_bos: bool = True,
    messages: Sequence[tuple[str, int]] = (),
    n_ctx_slot: int | None = None,
) -> PromptFate:
    """What Ollama 0.30+ does with a prompt of ``prompt_tokens`` at a loaded ``num_ctx``.

    ``prompt_tokens`` counts the rendered prompt as llama-server tokenizes it, BOS included when
    ``adds_bos`` (the "prompt=" of the WARN line and llama-server's ``n_prompt_tokens``). For
    ``endpoint`` ``"chat"`` (or ``"/api/chat"``), ``messages`` lists ``(role, tokens)`` of each
    message's share of that count; the rest is template. In order:

    1. Chat with ``truncate`` (the default; ``server/prompt.go`` ``chatPrompt``): drop messages
       from the front, keeping system messages and always the last one, until the rendered prompt
       (without BOS) is at most ``num_ctx`` tokens. Tool-call blocks, kept whole by Ollama, and
       768 tokens per image are not modelled.
    2. ``truncate`` and more than ``num_ctx - 1`` tokens (``llm/llama_server.go``
       ``completionPromptForRequest``): without ``shift``, Ollama answers 400 "the prompt is
       longer than the context length currently available..."; with it, keep
       ``min(num_keep + BOS, num_ctx - 1)`` tokens and the end, ``num_ctx - max((num_ctx -
       keep) / 2, 1)`` tokens in all (609 tokens at 256 evaluate 131: truncate_true_*.txt,
       WARN ``limit=131 prompt=609 keep=5``). A negative ``num_keep`` keeps the whole prompt.
    3. ``truncate`` false: the prompt goes to llama-server untouched, which answers 400
       ``exceed_context_size_error`` once it reaches its slot size (truncate_false_*.txt);
       ``n_ctx_slot`` defaults to ``num_ctx`` padded to 256 cells, as llama.cpp sizes it.

    Ollama skips step 2 when the prompt has fewer characters than ``num_ctx`` (it cannot then be
    longer in tokens); a token count cannot see that shortcut, which only matters for a prompt
    within a token of the limit.
    """
    if prompt_tokens < 0 or num_ctx < 1:
        raise ValueError(f"need prompt_tokens >= 0 and num_ctx >= 1, got {prompt_tokens} and {num_ctx}")
    kind = endpoint.rsplit("/", 1)[-1]
    if kind not in ("chat", "generate"):
        raise ValueError(f"endpoint must be 'chat' or 'generate' (or their /api paths), got {endpoint!r}")
    bos = 1 if adds_bos else 0
    tokens = prompt_tokens
    dropped = 0
    if kind == "chat" and truncate and messages:
        tokens, dropped = _drop_chat_messages(prompt_tokens, num_ctx, bos, messages)
    if n_ctx_slot is None:
        n_ctx_slot = -(-num_ctx // 256) * 256
    if not truncate or num_ctx <= 1:
        if tokens >= n_ctx_slot:
            return PromptFate(PromptOutcome.REJECTED, 400, 0, dropped, "llama-server")
        return PromptFate(_fits(dropped), 200, tokens, dropped)
    if tokens <= num_ctx - 1:
        return PromptFate(_fits(dropped), 200, tokens, dropped)
    if not shift:
        return PromptFate(PromptOutcome.REJECTED, 400, 0, dropped, "ollama")
    keep = tokens if num_keep < 0 else num_keep
    keep = min(keep + bos, num_ctx - 1)
    return PromptFate(PromptOutcome.CUT, 200, context_shift_prompt_limit(num_ctx, keep), dropped)


def context_shift_prompt_limit(num_ctx: int, num_keep: int) -> int:
    """``contextShiftPromptLimit``: keep ``num_keep``, free about half the rest (the first shift)."""
    if num_ctx <= 1:
        return 0
    num_keep = max(0, min(num_keep, num_ctx - 1))
    return num_ctx - max((num_ctx - num_keep) // 2, 1)


def _drop_chat_messages(
    prompt_tokens: int, num_ctx: int, bos: int, messages: Sequence[tuple[str, int]]
) -> tuple[int, int]:
    """``chatPrompt``'s loop: the tokens left and how many messages it dropped."""
    overhead = prompt_tokens - sum(count for _, count in messages)
    if overhead < 0:
        raise ValueError("messages hold more tokens than prompt_tokens")
    last = len(messages) - 1
    for start in range(last + 1):
        kept = [count for role, count in messages[:start] if role == "system"]
        kept.extend(count for _, count in messages[start:])
        tokens = overhead + sum(kept)
        if tokens - bos <= num_ctx or start == last:
            dropped = sum(1 for role, _ in messages[:start] if role != "system")
            return tokens, dropped
    raise AssertionError("unreachable")  # pragma: no cover


def _fits(dropped: int) -> PromptOutcome:
    return PromptOutcome.MESSAGES_DROPPED if dropped else PromptOutcome.FITS


# -- Ollama's own memory estimate and what it decides --------------------------------------------

EVICTION_THRESHOLD_PERCENT = 80
"""The pre-flight evicts when the prediction exceeds 80% of free memory."""

_BATCH_SURCHARGE: tuple[tuple[int, int], ...] = ((2048, 2 * _GIB), (1024, 768 * _MIB))
_BATCH_HEADROOM_PERCENT: tuple[tuple[int, int], ...] = ((2048, 60), (1024, 75))


def predict_server_vram(
    weights_bytes: int,
    block_count: int,
    head_count_kv_min: int,
    embedding_length: int,
    head_count_max: int,
    ctx_total: int,
) -> int:
    """``llm.PredictServerVRAM``: file size + ``2·layers·kv_heads·head_dim·ctx_total·2``.

    ``kv_heads`` is the smallest per-layer value (0 counts as 1) and ``head_dim`` is
    ``embedding_length / max(head_count)`` (0 when that is 0). It ignores the cache type, SWA,
    ``key_length``, projector and compute buffers: it predicts what Ollama will decide, not what
    fits (``policies.memory.ollama_predicted_bytes`` applies it to a model).
    """
    kv_heads = head_count_kv_min or 1
    head_dim = embedding_length // head_count_max if head_count_max > 0 else 0
    return weights_bytes + 2 * block_count * kv_heads * head_dim * ctx_total * 2


def batch_surcharge_bytes(num_batch: int, *, completion: bool = True) -> int:
    """``generationBatchSurcharge``: added to the prediction for a big batch's compute buffer.

    2 GiB at 2048 and above, 768 MiB at 1024 and above, else 0; embedding models pay none.
    """
    if not completion:
        return 0
    for floor, surcharge in _BATCH_SURCHARGE:
        if num_batch >= floor:
            return surcharge
    return 0


def automatic_num_batch(
    ctx_total: int,
    predicted_bytes: int | None = None,
    available_bytes: int | None = None,
    *,
    version: Version | None = None,
    cuda_without_flash_attention: bool = False,
    cuda_gpu_at_most_8gib: bool = False,
) -> int:
    """``automaticGenerationBatch``: the batch (``-b`` = ``-ub``) a completion model gets by default.

    2048 when ``num_ctx · P`` exceeds 32768, 1024 above 4096, else 512; a larger choice steps
    down unless the prediction is within 80% of available memory, within 60% (2048) or 75% (1024)
    of it, and the surcharge still fits under the 80% line. Unknown memory keeps the largest. On
    CUDA with flash attention off: 512, or 256 above 4096 on a GPU of at most 8 GiB. Before 0.30
    it was always 512.
    """
    if not uses_llama_server(version):
        return DEFAULT_NUM_BATCH
    if cuda_without_flash_attention:
        return 256 if ctx_total > 4096 and cuda_gpu_at_most_8gib else DEFAULT_NUM_BATCH
    batch = 2048 if ctx_total > 32768 else 1024 if ctx_total > 4096 else DEFAULT_NUM_BATCH
    while batch > DEFAULT_NUM_BATCH and not _batch_fits(batch, predicted_bytes, available_bytes):
        batch = 1024 if batch > 1024 else DEFAULT_NUM_BATCH
    return batch


def _batch_fits(batch: int, predicted: int | None, available: int | None) -> bool:
    """``generationBatchFits`` in Go's integer arithmetic."""
    if not predicted or not available:
        return True
    threshold = available * EVICTION_THRESHOLD_PERCENT // 100
    if predicted > threshold:
        return False
    for floor, percent in _BATCH_HEADROOM_PERCENT:
        if batch >= floor:
            if predicted > available * percent // 100:
                return False
            break
    return batch_surcharge_bytes(batch) <= threshold - predicted


def preflight_evicts(
    predicted: int,
    num_batch: int,
    free_bytes: int,
    others_loaded: bool | int,
    *,
    completion: bool = True,
    on_gpu: bool = True,
    explicit_partial_offload: bool = False,
) -> bool:
    """Whether Ollama evicts another model before spawning this one (``server/sched.go`` ``load``).

    Only when other models are loaded, the load goes to GPUs and ``num_gpu`` does not ask for a
    partial offload: evict when ``predicted + batch_surcharge_bytes(num_batch) > 80%`` of free.
    ``free_bytes`` is ``availableMemoryForPlacement``: the summed ``FreeMemory`` of the GPUs the
    load may use (only the ``main_gpu`` one when set), as Ollama accounts it, i.e. after
    ``updateFreeSpace`` subtracted the loaded runners' parsed buffer sizes. Neither
    ``OLLAMA_GPU_OVERHEAD`` nor the 457 MiB minimum (512 on Metal) is subtracted: they only show in
    the "gpu memory" log line. CPU-only loads are never evicted for by this check. A model
    Ollama does evict for is then loaded; one it wrongly lets in is left to llama.cpp ``--fit``.
    """
    if not others_loaded or not on_gpu or explicit_partial_offload:
        return False
    surcharge = batch_surcharge_bytes(num_batch, completion=completion)
    return predicted + surcharge > free_bytes * EVICTION_THRESHOLD_PERCENT // 100


LEGACY_GRAPH_ARCHITECTURES = frozenset({"llama", "llama4"})
"""Architectures ``fs/ggml`` ``GraphSize`` (before 0.30) sizes with the llama formula."""


def legacy_graph_bytes(
    architecture: str | None,
    *,
    embedding_length: int,
    head_count_max: int,
    head_count_kv_min: int,
    vocab_size: int,
    ctx_total: int,
    num_batch: int,
    kv_total_bytes: int,
) -> int:
    """The compute graph Ollama's pre-0.30 estimate assumed with every layer on the GPU.

    ``GraphSize`` full offload for llama: ``max(4b(1 + 4E + ctx(1 + H)), 4b(E + vocab))``
    (560 MiB for llama3.1:8b at 8192, batch 512). Other architectures on the llama.cpp runner
    fall back to ``(H / Hkv) · kv_total / 6`` (``EstimateGPULayers``). Ollama-engine
    architectures (gemma3, qwen3, ... at v0.12) measured their graph instead; this does not.
    """
    if (architecture or "") in LEGACY_GRAPH_ARCHITECTURES:
        batch = num_batch
        return max(
            4 * batch * (1 + 4 * embedding_length + ctx_total * (1 + head_count_max)),
            4 * batch * (embedding_length + vocab_size),
        )
    gqa = head_count_max // (head_count_kv_min or 1)
    return gqa * kv_total_bytes // 6


# -- helpers ------------------------------------------------------------------------------------


def _at_least(version: Version | None, floor: Version) -> bool:
    return version is None or version == (0, 0, 0) or version >= floor


def _go_int(value: Any, name: str, *, saturating: bool = False) -> int:
    """An ``int`` option as ``Options.FromMap`` reads it: ints as they are, floats by ``int64()``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f'option "{name}" must be of type integer')
    if isinstance(value, int):
        return value
    if math.isnan(value):
        return _INT64_MIN
    if not (_INT64_MIN <= value < _INT64_MAX + 1):
        if saturating:
            return _INT64_MAX if value > 0 else _INT64_MIN
        return _INT64_MIN  # amd64 CVTTSD2SI: "integer indefinite"
    return int(value)  # truncates toward zero, as Go does
