"""The fake's model store entries: GGUF metadata for /api/show and the memory model, and builders.

Why builders: tests name a real model's shape (gemma3:27b on a 24 GiB GPU) rather than invent
numbers; each builder's docstring says where its hyperparameters come from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from tests.fakeollama.wire import MiB, full_name, human_number, parse_params


@dataclass
class FakeModel:
    """One model in the fake store: enough GGUF metadata for /api/show and the memory model.

    ``digest`` is the manifest digest (/api/tags, /api/ps); ``blob`` the GGUF layer's digest.
    Ollama 0.33 keys its runners by the GGUF path, so names sharing a ``blob`` share a runner.
    """

    name: str
    family: str
    weights_bytes: int
    model_info: dict[str, Any]
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    parameters: str = ""
    digest: str = ""
    parameter_size: str = ""
    quantization_level: str = "Q4_K_M"
    template: str = "{{ .Prompt }}"
    compute_base_bytes: int = 300 * MiB  # before 0.33: compute buffer = base + per_ctx * num_ctx
    compute_bytes_per_ctx: int = 2048
    blob: str = ""
    model_buffer_bytes: int = 0
    """Weights as llama.cpp allocates them (0: ``weights_bytes``, the GGUF file size)."""
    compute_bytes_per_token: int = 0
    """0.33: activations per ubatch token in the compute buffer (0: derived from the shape)."""
    vocab_size: int = 0
    """Output logits per sequence (0: ``{arch}.vocab_size`` or the token list)."""

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = hashlib.sha256(self.name.encode()).hexdigest()
        if not self.blob:
            self.blob = hashlib.sha256(f"gguf:{self.digest}".encode()).hexdigest()
        if not self.parameter_size:
            self.parameter_size = human_number(int(self.model_info.get("general.parameter_count", 0)))

    @property
    def full_name(self) -> str:
        """Name with tag, as /api/tags and /api/ps print it ("gemma3-270m:latest")."""
        return full_name(self.name)

    @property
    def arch(self) -> str:
        return str(self.model_info.get("general.architecture", self.family))

    def info(self, key: str, default: Any = None) -> Any:
        """model_info value of an architecture key, e.g. info("block_count")."""
        return self.model_info.get(f"{self.arch}.{key}", default)

    @property
    def context_length(self) -> int:
        return int(self.info("context_length", 2048))

    @property
    def num_ctx_param(self) -> int | None:
        """Modelfile PARAMETER num_ctx, if any."""
        vals = parse_params(self.parameters).get("num_ctx")
        return int(vals[-1]) if vals else None

    @property
    def add_bos(self) -> bool:
        """Whether the tokenizer prepends BOS (llama.cpp's default for llama/gemma vocabularies)."""
        return bool(self.model_info.get("tokenizer.ggml.add_bos_token", True))


def _gemma3_info(
    params: int, layers: int, heads: int, kv: int, head_dim: int, emb: int, window: int, ctx: int, ffn: int
) -> dict[str, Any]:
    return {
        "gemma3.attention.head_count": heads,
        "gemma3.attention.head_count_kv": kv,
        "gemma3.attention.key_length": head_dim,
        "gemma3.attention.layer_norm_rms_epsilon": 1e-06,
        "gemma3.attention.sliding_window": window,
        "gemma3.attention.value_length": head_dim,
        "gemma3.block_count": layers,
        "gemma3.context_length": ctx,
        "gemma3.embedding_length": emb,
        "gemma3.feed_forward_length": ffn,
        "gemma3.rope.freq_base": 1000000,
        "general.architecture": "gemma3",
        "general.basename": "gemma-3",
        "general.file_type": 15,
        "general.license": "gemma",
        "general.parameter_count": params,
        "general.quantization_version": 2,
        "general.tags": ["gemma3", "gemma", "google", "text-generation"],
        "general.type": "model",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]"],
    }


GEMMA3_TEMPLATE = (
    "{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    '{{- if eq .Role "user" }}<start_of_turn>user\n{{- if and (eq $i 1) $.System }}\n'
    '{{ $.System }}\n{{ end }}\n{{ .Content }}<end_of_turn>\n{{ else if eq .Role "assistant" }}'
    "<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}\n"
    "{{- if $last }}<start_of_turn>model\n{{ end }}\n{{- end }}"
)
GEMMA3_VOCAB = 262144

GEMMA3_270M_DIGEST = "38c4052db7a9cdb2e8e958f2918bbddd25f6d013fb8af67637caf67c34de4688"
GEMMA3_270M_BLOB = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
"""The GGUF layer of the transcripts' gemma3-270m (tests/data/ollama-0.33/show.txt, FROM line)."""
GEMMA3_270M_8K_DIGEST = "873795009be3bdeb9b6bcfb82510d1a5bbaea844943d5e7d27012138e2702b1a"


def gemma3_27b() -> FakeModel:
    """gemma3:27b Q4_K_M: 62 layers, 16 KV heads x 128, window 1024 (10 global layers)."""
    return FakeModel(
        "gemma3:27b",
        "gemma3",
        17_396_936_941,
        _gemma3_info(27_432_406_640, 62, 32, 16, 128, 5376, 1024, 131072, 21504),
        capabilities=["completion", "vision"],
        template=GEMMA3_TEMPLATE,
        compute_base_bytes=520 * MiB,
        compute_bytes_per_ctx=4096,
        vocab_size=GEMMA3_VOCAB,
    )


def gemma3_4b() -> FakeModel:
    """gemma3:4b Q4_K_M: 34 layers, 4 KV heads x 256, window 1024 (5 global layers)."""
    return FakeModel(
        "gemma3:4b",
        "gemma3",
        3_338_801_804,
        _gemma3_info(4_300_079_472, 34, 8, 4, 256, 2560, 1024, 131072, 10240),
        capabilities=["completion", "vision"],
        template=GEMMA3_TEMPLATE,
        compute_base_bytes=260 * MiB,
        compute_bytes_per_ctx=2048,
        vocab_size=GEMMA3_VOCAB,
    )


def gemma3_270m(
    name: str = "gemma3-270m",
    *,
    digest: str = GEMMA3_270M_DIGEST,
    parameters: str = 'stop                           "<end_of_turn>"',
) -> FakeModel:
    """The model of the transcripts (show.txt): 18 layers, 1 KV head x 256, window 512.

    ``model_buffer_bytes`` is llama-server's CPU model buffer plus CPU_REPACK (222.51 + 12.66
    MiB, tests/data/ollama-0.33/memory-matrix.txt), which /api/ps counts instead of the file.
    """
    info = _gemma3_info(268_098_176, 18, 4, 1, 256, 640, 512, 32768, 2048)
    info.update(
        {
            "tokenizer.ggml.add_bos_token": True,
            "tokenizer.ggml.add_eos_token": False,
            "tokenizer.ggml.bos_token_id": 2,
            "tokenizer.ggml.eos_token_id": 1,
            "tokenizer.ggml.padding_token_id": 0,
            "tokenizer.ggml.unknown_token_id": 3,
            "general.size_label": "270M",
        }
    )
    return FakeModel(
        name,
        "gemma3",
        253_113_841,
        dict(sorted(info.items())),
        parameters=parameters,
        digest=digest,
        template=GEMMA3_TEMPLATE,
        compute_base_bytes=4 * MiB,
        compute_bytes_per_ctx=512,
        blob=GEMMA3_270M_BLOB,
        model_buffer_bytes=round((222.51 + 12.66) * MiB),
        vocab_size=GEMMA3_VOCAB,
    )


def gemma3_270m_b() -> FakeModel:
    """``gemma3-270m-b``: the same GGUF and Modelfile as gemma3-270m (identical manifest digest)."""
    return gemma3_270m("gemma3-270m-b")


def gemma3_270m_8k() -> FakeModel:
    """``gemma3-270m-8k``: the same GGUF plus ``PARAMETER num_ctx 8192`` (reload_e transcript)."""
    return gemma3_270m(
        "gemma3-270m-8k",
        digest=GEMMA3_270M_8K_DIGEST,
        parameters='num_ctx                        8192\nstop                           "<end_of_turn>"',
    )


def llama_tiny() -> FakeModel:
    """The transcripts' random-weight llama: 8 layers, hidden 512, 8 heads / 2 KV heads (head dim
    64), FFN 1408, vocab 32000, context 8192, F16, 78,548,384 bytes (memory-matrix.txt, part B)."""
    info = {
        "general.architecture": "llama",
        "general.parameter_count": 38_660_608,
        "general.file_type": 1,
        "llama.attention.head_count": 8,
        "llama.attention.head_count_kv": 2,
        "llama.attention.layer_norm_rms_epsilon": 1e-05,
        "llama.block_count": 8,
        "llama.context_length": 8192,
        "llama.embedding_length": 512,
        "llama.feed_forward_length": 1408,
        "llama.rope.dimension_count": 64,
        "llama.vocab_size": 32000,
        "tokenizer.ggml.model": "llama",
    }
    return FakeModel(
        "llama-tiny",
        "llama",
        78_548_384,
        info,
        quantization_level="F16",
        model_buffer_bytes=round(74.28 * MiB),
    )


def llama3_1_8b() -> FakeModel:
    """llama3.1:8b Q4_K_M: 32 layers, 8 KV heads, head_dim 4096/32 = 128, no sliding window."""
    info = {
        "general.architecture": "llama",
        "general.parameter_count": 8_030_261_248,
        "general.file_type": 15,
        "general.quantization_version": 2,
        "llama.attention.head_count": 32,
        "llama.attention.head_count_kv": 8,
        "llama.attention.layer_norm_rms_epsilon": 1e-05,
        "llama.block_count": 32,
        "llama.context_length": 131072,
        "llama.embedding_length": 4096,
        "llama.feed_forward_length": 14336,
        "llama.rope.dimension_count": 128,
        "llama.rope.freq_base": 500000,
        "llama.vocab_size": 128256,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["!", '"', "#", "$", "%", "&", "'", "("],
    }
    return FakeModel(
        "llama3.1:8b",
        "llama",
        4_920_753_328,
        info,
        capabilities=["completion", "tools"],
        compute_base_bytes=280 * MiB,
        compute_bytes_per_ctx=2048,
    )


def lfm2_1_2b() -> FakeModel:
    """lfm2:1.2b: a hybrid (10 conv + 6 attention layers, head_count_kv 0 on conv layers, facts
    §4); Ollama 0.33 runs it with one parallel slot whatever OLLAMA_NUM_PARALLEL says."""
    kv = [0, 0, 8, 0, 0, 8, 0, 0, 8, 0, 8, 0, 8, 0, 8, 0]
    info = {
        "general.architecture": "lfm2",
        "general.parameter_count": 1_170_340_608,
        "general.file_type": 7,
        "lfm2.attention.head_count": 32,
        "lfm2.attention.head_count_kv": kv,
        "lfm2.block_count": 16,
        "lfm2.context_length": 128000,
        "lfm2.embedding_length": 2048,
        "lfm2.feed_forward_length": 8192,
        "lfm2.vocab_size": 65536,
        "tokenizer.ggml.model": "gpt2",
    }
    return FakeModel(
        "lfm2:1.2b",
        "lfm2",
        1_246_000_000,
        info,
        quantization_level="Q8_0",
        capabilities=["completion", "tools"],
    )


def nomic_embed_text() -> FakeModel:
    """An embedding-only model (for /api/embed); its Modelfile asks num_ctx 8192 > trained 2048."""
    info = {
        "general.architecture": "nomic-bert",
        "general.parameter_count": 136_727_040,
        "nomic-bert.attention.head_count": 12,
        "nomic-bert.block_count": 12,
        "nomic-bert.context_length": 2048,
        "nomic-bert.embedding_length": 768,
        "nomic-bert.pooling_type": 1,
    }
    return FakeModel(
        "nomic-embed-text",
        "nomic-bert",
        274_302_450,
        info,
        capabilities=["embedding"],
        quantization_level="F16",
        parameters="num_ctx                        8192",
        compute_base_bytes=24 * MiB,
        compute_bytes_per_ctx=256,
        vocab_size=30522,
    )
