"""A fake Ollama server (aiohttp) that speaks Ollama's wire format and records what reaches it.

Why: the proxy must be tested against something that behaves like Ollama where it matters to a
governor (num_ctx reloads, keep_alive, memory footprint, VRAM spill, streaming framing, errors)
without a GPU or a real model. Ground truth: /work/shared/ollama-facts.md and the recorded
exchanges in /work/shared/ollama-transcripts/. This module imports nothing from the project, so
its "true" memory model cannot silently agree with a buggy estimator.

What the simulated GPU models (``vram_bytes`` set), and what it does not:

- Memory: a runner's footprint is weights + the llama.cpp KV cache (GQA heads, key/value lengths,
  sliding-window layers, pad 256, ``num_ctx x num_parallel``, KV cache type) + a compute buffer
  linear in ``num_ctx`` (``size_for``). A load that does not fit in the VRAM left free by other
  runners (idle ones are evicted first, LRU) puts the rest in system RAM: ``spilled``, as
  ``/api/ps`` shows with ``size_vram < size``. There is no llama.cpp fit target (1 GiB kept
  free): every byte of VRAM is usable.
- Speed: each reply token takes ``token_delay_s``, each ``PROMPT_TOKENS_PER_STEP`` prompt tokens
  one ``token_delay_s`` too (prompt processing is batched, so much faster than generation). A
  load takes ``load_delay_s`` plus the weights read at ``load_bytes_per_s``. On a spilled runner
  all three are ``spill_slowdown`` times slower, however much of it spilled.
- Not modelled: slowdown with a longer context or a partial spill's size, parallel slots
  sharing the GPU's throughput (each slot runs at full speed), prompt caching, context shift,
  chat history truncation (a too-long prompt is cut and counted in ``truncated``), multi-GPU.
- Time: ``time_scale`` compresses the simulated delays (load, prompt, tokens): the fake sleeps
  ``delay / time_scale`` but reports ``load_duration``, ``prompt_eval_duration``,
  ``eval_duration`` and ``total_duration`` in simulated time, so a benchmark can replay minutes of
  loading in a second and still read realistic figures. Waits on other requests (a load in
  progress, a reload, a busy slot) are wall time x ``time_scale``, since what they wait on is
  itself compressed; the fake's own overhead is reported as it is. keep_alive expiry is wall
  time, not compressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

MiB = 1 << 20
FOREVER_NS = 2**63 - 1  # Go's math.MaxInt64 duration: expires_at ~292 years ahead
DEFAULT_KEEP_ALIVE_NS = 5 * 60 * 10**9
N_UBATCH = 512
PROMPT_TOKENS_PER_STEP = 512  # prompt eval: one token-delay per ubatch of prompt tokens
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
JSON_CT = "application/json; charset=utf-8"
_INT_OPTS = frozenset({"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx",
                       "num_batch", "num_gpu", "main_gpu", "num_thread"})
_FLOAT_OPTS = frozenset({"temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
                         "presence_penalty", "frequency_penalty"})
_BOOL_OPTS = frozenset({"use_mmap", "numa", "penalize_newline"})
_GO_UNITS_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9,
                "m": 60 * 10**9, "h": 3600 * 10**9}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DIGEST = re.compile(r"sha256[:-][0-9a-f]{64}")


# ---------------------------------------------------------------------------- helpers
def _dumps(obj: Any) -> str:
    """Compact JSON escaped like Go's json.Marshal (<, >, & as \\u003c...), as Ollama sends it."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _ts(ns: int) -> str:
    """RFC3339Nano in UTC with trailing zeros trimmed, like Go's time.Time JSON."""
    sec, frac = divmod(ns, 10**9)
    base = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def _pad256(n: int) -> int:
    return -(-n // 256) * 256


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber, which produces details.parameter_size ("268.10M", "8.0B")."""
    for div, suffix, dec in ((10**9, "B", 1), (10**6, "M", 2)):
        if n >= div:
            v = n / div
            return f"{v:.0f}{suffix}" if v == math.floor(v) else f"{v:.{dec}f}{suffix}"
    return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


def parse_go_duration(text: str) -> int:
    """Nanoseconds in a Go time.ParseDuration string; ValueError carries Go's message."""
    s, neg = text, False
    if s[:1] in ("+", "-"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"time: invalid duration {json.dumps(text)}")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if m is None:
            if re.fullmatch(r"[0-9.]+", s[pos:]):
                raise ValueError(f"time: missing unit in duration {json.dumps(text)}")
            raise ValueError(f"time: invalid duration {json.dumps(text)}")
        total += float(m.group(1)) * _GO_UNITS_NS[m.group(2)]
        pos = m.end()
    return -int(total) if neg else int(total)


def _go_repr(v: Any) -> str:
    """Go's %#v for a Modelfile parameter value (strings quoted, floats without '.0')."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _param_lines(params: dict[str, list[Any]]) -> str:
    """Render parameters as /api/show does: "%-30s %#v", one line per (list) value."""
    return "\n".join(f"{k:<30} {_go_repr(v)}" for k, vals in params.items() for v in vals)


def _parse_params(text: str) -> dict[str, list[Any]]:
    """Parse /api/show-style parameter lines back into key -> values."""
    out: dict[str, list[Any]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, _, raw = line.strip().partition(" ")
        try:
            val: Any = json.loads(raw.strip())
        except ValueError:
            val = raw.strip()
        out.setdefault(key, []).append(val)
    return out


class _ApiError(Exception):
    """Raised by handlers; the middleware turns it into Ollama's (or OpenAI's) error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# ---------------------------------------------------------------------------- models
@dataclass
class FakeModel:
    """One model in the fake store: enough GGUF metadata for /api/show and the memory model."""

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
    compute_base_bytes: int = 300 * MiB  # compute buffer = base + per_ctx * num_ctx
    compute_bytes_per_ctx: int = 2048

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = hashlib.sha256(self.name.encode()).hexdigest()
        if not self.parameter_size:
            self.parameter_size = human_number(int(self.model_info.get("general.parameter_count", 0)))

    @property
    def full_name(self) -> str:
        """Name with tag, as /api/tags and /api/ps print it ("gemma3-270m:latest")."""
        return _full_name(self.name)

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
        vals = _parse_params(self.parameters).get("num_ctx")
        return int(vals[-1]) if vals else None


def _full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _gemma3_info(params: int, layers: int, heads: int, kv: int, head_dim: int, emb: int,
                 window: int, ctx: int, ffn: int) -> dict[str, Any]:
    return {
        "gemma3.attention.head_count": heads, "gemma3.attention.head_count_kv": kv,
        "gemma3.attention.key_length": head_dim, "gemma3.attention.layer_norm_rms_epsilon": 1e-06,
        "gemma3.attention.sliding_window": window, "gemma3.attention.value_length": head_dim,
        "gemma3.block_count": layers, "gemma3.context_length": ctx,
        "gemma3.embedding_length": emb, "gemma3.feed_forward_length": ffn,
        "gemma3.rope.freq_base": 1000000, "general.architecture": "gemma3",
        "general.basename": "gemma-3", "general.file_type": 15, "general.license": "gemma",
        "general.parameter_count": params, "general.quantization_version": 2,
        "general.tags": ["gemma3", "gemma", "google", "text-generation"], "general.type": "model",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]"],
    }


GEMMA3_TEMPLATE = (
    "{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    "{{- if eq .Role \"user\" }}<start_of_turn>user\n{{- if and (eq $i 1) $.System }}\n"
    "{{ $.System }}\n{{ end }}\n{{ .Content }}<end_of_turn>\n{{ else if eq .Role \"assistant\" }}"
    "<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}\n"
    "{{- if $last }}<start_of_turn>model\n{{ end }}\n{{- end }}"
)


def gemma3_27b() -> FakeModel:
    """gemma3:27b Q4_K_M: 62 layers, 16 KV heads x 128, window 1024 (10 global layers)."""
    return FakeModel("gemma3:27b", "gemma3", 17_396_936_941,
                     _gemma3_info(27_432_406_640, 62, 32, 16, 128, 5376, 1024, 131072, 21504),
                     capabilities=["completion", "vision"], template=GEMMA3_TEMPLATE,
                     compute_base_bytes=520 * MiB, compute_bytes_per_ctx=4096)


def gemma3_4b() -> FakeModel:
    """gemma3:4b Q4_K_M: 34 layers, 4 KV heads x 256, window 1024 (5 global layers)."""
    return FakeModel("gemma3:4b", "gemma3", 3_338_801_804,
                     _gemma3_info(4_300_079_472, 34, 8, 4, 256, 2560, 1024, 131072, 10240),
                     capabilities=["completion", "vision"], template=GEMMA3_TEMPLATE,
                     compute_base_bytes=260 * MiB, compute_bytes_per_ctx=2048)


def gemma3_270m() -> FakeModel:
    """The model of the transcripts (show.txt): 18 layers, 1 KV head x 256, window 512."""
    info = _gemma3_info(268_098_176, 18, 4, 1, 256, 640, 512, 32768, 2048)
    info.update({"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
                 "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
                 "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.unknown_token_id": 3,
                 "general.size_label": "270M"})
    return FakeModel("gemma3-270m", "gemma3", 253_113_841, dict(sorted(info.items())),
                     parameters='stop                           "<end_of_turn>"',
                     digest="38c4052db7a9cdb2e8e958f2918bbddd25f6d013fb8af67637caf67c34de4688",
                     template=GEMMA3_TEMPLATE, compute_base_bytes=4 * MiB,
                     compute_bytes_per_ctx=512)


def llama3_1_8b() -> FakeModel:
    """llama3.1:8b Q4_K_M: 32 layers, 8 KV heads, head_dim 4096/32 = 128, no sliding window."""
    info = {
        "general.architecture": "llama", "general.parameter_count": 8_030_261_248,
        "general.file_type": 15, "general.quantization_version": 2,
        "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8,
        "llama.attention.layer_norm_rms_epsilon": 1e-05, "llama.block_count": 32,
        "llama.context_length": 131072, "llama.embedding_length": 4096,
        "llama.feed_forward_length": 14336, "llama.rope.dimension_count": 128,
        "llama.rope.freq_base": 500000, "llama.vocab_size": 128256,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["!", '"', "#", "$", "%", "&", "'", "("],
    }
    return FakeModel("llama3.1:8b", "llama", 4_920_753_328, info,
                     capabilities=["completion", "tools"], compute_base_bytes=280 * MiB,
                     compute_bytes_per_ctx=2048)


def nomic_embed_text() -> FakeModel:
    """An embedding-only model (for /api/embed); its Modelfile asks num_ctx 8192 > trained 2048."""
    info = {
        "general.architecture": "nomic-bert", "general.parameter_count": 136_727_040,
        "nomic-bert.attention.head_count": 12, "nomic-bert.block_count": 12,
        "nomic-bert.context_length": 2048, "nomic-bert.embedding_length": 768,
        "nomic-bert.pooling_type": 1,
    }
    return FakeModel("nomic-embed-text", "nomic-bert", 274_302_450, info,
                     capabilities=["embedding"], quantization_level="F16",
                     parameters="num_ctx                        8192",
                     compute_base_bytes=24 * MiB, compute_bytes_per_ctx=256)


# ---------------------------------------------------------------------------- state
@dataclass
class Recorded:
    """One request as it reached "Ollama" (blob uploads are recorded with an empty body)."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class LoadedState:
    """A loaded runner: what /api/ps reports, plus in-flight count and parallel slots."""

    model: FakeModel
    name: str
    num_ctx: int
    size: int
    size_vram: int
    spilled: bool
    keep_alive_ns: int
    expires_at_ns: int
    slots: asyncio.Semaphore = field(repr=False)
    refcount: int = 0
    last_used_ns: int = 0


@dataclass
class _Gen:
    """One completion in flight, in any of the four wire flavours."""

    flavour: str  # generate | chat | oa_chat | oa_completion
    req_model: str
    model: FakeModel
    num_ctx: int
    keep_alive: int | None
    prompt_tokens: int
    n_tokens: int
    done_reason: str
    stream: bool
    t0: int
    include_usage: bool = False
    oid: str = ""
    created: int = 0
    load_ns: int = 0
    prompt_ns: int = 0
    eval_ns: int = 0
    truncated: bool = False
    sim_extra_ns: int = 0
    """Simulated minus wall time so far (0 unless ``time_scale`` compresses the delays)."""


@dataclass
class _LoadTiming:
    """The load one request performed itself: its compressed sleep, in wall and simulated time."""

    sleep_wall_ns: int = 0
    simulated_s: float = 0.0


@dataclass(frozen=True)
class Completion:
    """One generation as the fake ran it: what a client cannot read from the response alone."""

    path: str
    model: str
    num_ctx: int
    spilled: bool
    truncated: bool
    prompt_tokens: int


# ---------------------------------------------------------------------------- server
class FakeOllama:
    """Fake Ollama: build it, serve ``.app``, then assert on requests/loads/cancelled/etc."""

    def __init__(self, *, models: Sequence[FakeModel] | None = None,
                 version: str = "0.32.15", vram_bytes: int | None = None, num_parallel: int = 1,
                 default_num_ctx: int = 4096, kv_cache_type: str = "f16",
                 token_delay_s: float = 0.0, spill_slowdown: float = 10.0,
                 load_delay_s: float = 0.0, reply_tokens: int = 8,
                 load_bytes_per_s: float | None = None, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if load_bytes_per_s is not None and load_bytes_per_s <= 0:
            raise ValueError(f"load_bytes_per_s must be > 0, got {load_bytes_per_s}")
        self.version, self.vram_bytes, self.num_parallel = version, vram_bytes, num_parallel
        self.default_num_ctx, self.kv_cache_type = default_num_ctx, kv_cache_type
        self.token_delay_s, self.spill_slowdown = token_delay_s, spill_slowdown
        self.load_delay_s, self.reply_tokens = load_delay_s, reply_tokens
        self.load_bytes_per_s, self.time_scale = load_bytes_per_s, time_scale
        self.n_ubatch = N_UBATCH
        self.models: dict[str, FakeModel] = {}
        self.registry: dict[str, FakeModel] = {}  # what /api/pull can fetch besides known models
        self._modified: dict[str, int] = {}
        now = time.time_ns()  # one timestamp, so /api/tags keeps the given order
        for m in (gemma3_270m(),) if models is None else models:
            self._add_model(m, now)
        self.requests: list[Recorded] = []
        self.loads: list[tuple[str, int]] = []
        self.cancelled: list[str] = []
        self.truncated: list[str] = []
        self.completions: list[Completion] = []
        self.fail_next: list[tuple[int, str]] = []
        self.hold: asyncio.Event | None = None
        self.blob_bytes_received: dict[str, int] = {}
        self.blobs: set[str] = set()
        self._loaded: dict[str, LoadedState] = {}
        self._sched = asyncio.Lock()
        self._changed = asyncio.Event()
        self._oa_counter = 0
        self.app = self._build_app()

    # ------------------------------------------------------------ public inspection
    def bodies(self, path: str) -> list[Any]:
        """Parsed JSON bodies received on ``path`` (unparsable bodies are skipped)."""
        out: list[Any] = []
        for r in self.requests:
            if r.path == path:
                with contextlib.suppress(ValueError):
                    out.append(r.json())
        return out

    def loaded(self) -> dict[str, LoadedState]:
        """Currently loaded runners keyed by full model name (expired ones are dropped first)."""
        self._purge()
        return dict(self._loaded)

    def free_vram_bytes(self) -> int | None:
        """VRAM not used by loaded runners; None on a CPU-only host."""
        if self.vram_bytes is None:
            return None
        self._purge()
        return self.vram_bytes - sum(s.size_vram for s in self._loaded.values())

    def parallel_for(self, model: FakeModel) -> int:
        """Parallel slots P: embedding models always run with 1."""
        return 1 if "embedding" in model.capabilities else max(self.num_parallel, 1)

    def clamp_ctx(self, model: FakeModel, num_ctx: int) -> int:
        return max(4, min(num_ctx, model.context_length))

    def kv_bytes(self, model: FakeModel, num_ctx: int) -> int:
        """llama.cpp KV cache (facts §3a): per-layer cells x n_head_kv x (k+v) x bytes/element."""
        p, num_ctx = self.parallel_for(model), self.clamp_ctx(model, num_ctx)
        s = KV_TYPE_BYTES[self.kv_cache_type]
        n_layer, heads = int(model.info("block_count", 0)), model.info("attention.head_count", 1)
        kv_heads = model.info("attention.head_count_kv", heads)
        n_head = int(max(heads) if isinstance(heads, list) else heads) or 1
        head_dim = int(model.info("embedding_length", 0)) // n_head
        kv_len = int(model.info("attention.key_length", head_dim))
        kv_len += int(model.info("attention.value_length", head_dim))
        window = model.info("attention.sliding_window")
        pattern = model.info("attention.sliding_window_pattern")
        n_ctx = _pad256(num_ctx * p)
        n_ctx_seq = _pad256(n_ctx // p)
        total = 0.0
        for il in range(n_layer):
            n_kv = int(kv_heads[il] if isinstance(kv_heads, list) else kv_heads)
            if isinstance(pattern, list):
                swa = bool(pattern[il])
            else:
                swa = window is not None and model.arch == "gemma3" and il % 6 != 5
            cells = (p * _pad256(min(n_ctx_seq, int(window) + self.n_ubatch)) if swa
                     else n_ctx_seq * p)
            total += cells * n_kv * kv_len * s
        return int(total)

    def compute_bytes(self, model: FakeModel, num_ctx: int) -> int:
        """Compute buffer: an offset plus a slope in num_ctx, both per model (no closed form)."""
        return model.compute_base_bytes + model.compute_bytes_per_ctx * self.clamp_ctx(model, num_ctx)

    def size_for(self, model: FakeModel, num_ctx: int) -> int:
        """The "true" footprint /api/ps reports as size: weights + KV cache + compute buffer."""
        return model.weights_bytes + self.kv_bytes(model, num_ctx) + self.compute_bytes(model, num_ctx)

    def load_seconds(self, model: FakeModel, *, spilled: bool) -> float:
        """Simulated seconds a load takes: the fixed delay plus reading the weights; slower spilled."""
        seconds = self.load_delay_s
        if self.load_bytes_per_s is not None:
            seconds += model.weights_bytes / self.load_bytes_per_s
        return seconds * (self.spill_slowdown if spilled else 1.0)

    def _scaled_ns(self, wall_ns: int) -> int:
        """Wall time spent waiting on compressed delays, in simulated time."""
        return round(wall_ns * self.time_scale)

    def _compressed_ns(self, wall_ns: int, simulated_s: float) -> int:
        """Simulated time of a span whose wall time ``wall_ns`` included one compressed sleep of
        ``simulated_s``: the sleep counts at its simulated length, the overhead as it was."""
        return wall_ns + round(simulated_s * 1e9 * (1.0 - 1.0 / self.time_scale))

    def _acquire_ns(self, wall_ns: int, timing: _LoadTiming) -> int:
        """Simulated time of an ``_acquire``: its own load at the simulated length, and the rest
        (waits on other requests' loads and reloads, themselves compressed) scaled up."""
        own = self._compressed_ns(timing.sleep_wall_ns, timing.simulated_s)
        return own + self._scaled_ns(wall_ns - timing.sleep_wall_ns)

    # ------------------------------------------------------------ store / scheduler
    def _add_model(self, m: FakeModel, ts: int | None = None) -> None:
        self.models[m.full_name] = m
        self._modified[m.full_name] = time.time_ns() if ts is None else ts

    def _find(self, name: str) -> FakeModel | None:
        return self.models.get(_full_name(name)) if name else None

    def _newer(self) -> bool:
        parts = [int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", self.version)[:2]]
        return tuple(parts) >= (0, 30)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _purge(self) -> None:
        now = time.time_ns()
        for name, s in list(self._loaded.items()):
            if s.refcount == 0 and s.expires_at_ns <= now:
                del self._loaded[name]

    def _unload(self, state: LoadedState) -> None:
        if self._loaded.get(state.name) is state:
            del self._loaded[state.name]
            self._notify()

    async def _make_room(self, name: str, size: int) -> bool:
        """Evict idle other runners, LRU first, until ``size`` fits; False if it had to wait."""
        while self.vram_bytes is not None:
            free = self.vram_bytes - sum(s.size_vram for n, s in self._loaded.items() if n != name)
            others = [s for n, s in self._loaded.items() if n != name]
            if size <= free or not others:
                return True
            idle = [s for s in others if s.refcount == 0]
            if not idle:
                await self._wait_change()
                return False
            self._unload(min(idle, key=lambda s: s.last_used_ns))
        return True

    async def _acquire(self, model: FakeModel, num_ctx: int, keep_alive: int | None,
                       timing: _LoadTiming | None = None) -> LoadedState:
        """Get a runner at ``num_ctx``, (re)loading like Ollama's scheduler; caller must release.

        ``timing`` receives the load this call performed itself, for reporting simulated time.
        """
        name = model.full_name
        async with self._sched:
            while True:
                self._purge()
                state = self._loaded.get(name)
                if state is not None and state.num_ctx == num_ctx:
                    state.refcount += 1
                    break
                if state is not None and state.refcount > 0:
                    await self._wait_change()  # a reload waits for in-flight requests
                    continue
                if state is not None:
                    self._unload(state)
                size = self.size_for(model, num_ctx)
                if not await self._make_room(name, size):
                    continue
                free = self.free_vram_bytes()
                size_vram = 0 if free is None else min(size, max(free, 0))
                spilled = free is not None and size_vram < size
                ka = DEFAULT_KEEP_ALIVE_NS if keep_alive is None else keep_alive
                state = LoadedState(model, name, num_ctx, size, size_vram, spilled, ka,
                                    time.time_ns() + ka, asyncio.Semaphore(self.parallel_for(model)),
                                    refcount=1, last_used_ns=time.monotonic_ns())
                self._loaded[name] = state
                self.loads.append((name, num_ctx))
                load_s = self.load_seconds(model, spilled=spilled)
                t_sleep = time.monotonic_ns()
                try:
                    if load_s > 0:
                        await asyncio.sleep(load_s / self.time_scale)
                    if timing is not None:
                        timing.sleep_wall_ns += time.monotonic_ns() - t_sleep
                        timing.simulated_s += load_s
                except asyncio.CancelledError:
                    self._release(state)
                    raise
                break
        if keep_alive is not None:
            state.keep_alive_ns = keep_alive  # provided keep_alive persists on the runner
        return state

    def _release(self, state: LoadedState) -> None:
        state.refcount -= 1
        state.last_used_ns = time.monotonic_ns()
        if state.refcount == 0:
            if state.keep_alive_ns == 0:
                self._unload(state)
            else:
                state.expires_at_ns = time.time_ns() + state.keep_alive_ns
        self._notify()

    # ------------------------------------------------------------ request parsing
    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            raise _ApiError(400, "missing request body")
        try:
            text = raw.decode()
            obj = json.loads(text)
        except UnicodeDecodeError as e:
            raise _ApiError(400, "invalid character in string literal") from e
        except json.JSONDecodeError as e:
            if e.pos >= len(text.rstrip()):
                raise _ApiError(400, "unexpected EOF") from e
            raise _ApiError(400, f"invalid character {text[e.pos]!r} looking for beginning of value") from e
        if not isinstance(obj, dict):
            raise _ApiError(400, f"json: cannot unmarshal {type(obj).__name__} into Go value")
        return obj

    @staticmethod
    def _keep_alive(body: dict[str, Any]) -> int | None:
        """api.Duration: numbers are seconds, strings Go durations, negative means forever."""
        v = body.get("keep_alive")
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise _ApiError(400, f"Unsupported type: '{type(v).__name__}'")
        if isinstance(v, str):
            try:
                ns = parse_go_duration(v)
            except ValueError as e:
                raise _ApiError(400, str(e)) from e
        else:
            ns = int(v * 10**9) if isinstance(v, int) else int(v * 1e9)
        return FOREVER_NS if ns < 0 else ns

    @staticmethod
    def _options(body: dict[str, Any]) -> dict[str, Any]:
        """Options.FromMap: wrong types are HTTP 500, ints given as floats are truncated."""
        opts = body.get("options") or {}
        if not isinstance(opts, dict):
            raise _ApiError(400, "json: cannot unmarshal options into Go struct field of type map")
        out = dict(opts)
        for k, v in opts.items():
            num = isinstance(v, int | float) and not isinstance(v, bool)
            if k in _INT_OPTS:
                if not num:
                    raise _ApiError(500, f'option "{k}" must be of type integer')
                out[k] = int(v)
            elif k in _FLOAT_OPTS and not num:
                raise _ApiError(500, f'option "{k}" must be of type float32')
            elif k in _BOOL_OPTS and not isinstance(v, bool):
                raise _ApiError(500, f'option "{k}" must be of type boolean')
        return out

    def _model(self, body: dict[str, Any], key: str = "model") -> tuple[str, FakeModel]:
        name = body.get(key) or body.get("name") or ""
        if not isinstance(name, str):
            raise _ApiError(400, f"json: cannot unmarshal into Go struct field .{key} of type string")
        model = self._find(name)
        if model is None:
            raise _ApiError(404, f"model '{name}' not found")
        return name, model

    def _num_ctx(self, model: FakeModel, opts: dict[str, Any]) -> int:
        """Effective num_ctx: request > Modelfile > server default, clamped to the trained length."""
        ctx = opts.get("num_ctx")
        if ctx is None:
            ctx = model.num_ctx_param
        return self.clamp_ctx(model, self.default_num_ctx if ctx is None else int(ctx))

    @staticmethod
    def _text(content: Any) -> str:
        if isinstance(content, list):  # OpenAI content parts
            return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else ""

    # ------------------------------------------------------------ app
    def _build_app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            is_blob_post = request.method == "POST" and request.path.startswith("/api/blobs/")
            body = b"" if is_blob_post else await request.read()
            self.requests.append(Recorded(request.method, request.path, request.rel_url.raw_query_string,
                                          CIMultiDict(request.headers), body))
            try:
                return await handler(request)
            except _ApiError as e:
                if request.path.startswith("/v1/"):
                    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(e.status, "api_error")
                    err = {"error": {"message": e.message, "type": kind, "param": None, "code": None}}
                    return _json(err, e.status, "application/json")
                return _json({"error": e.message}, e.status)

        app = web.Application(middlewares=[record], client_max_size=1 << 30)
        r = app.router
        r.add_get("/", self._root)
        r.add_get("/api/version", self._version)
        r.add_get("/api/tags", self._tags)
        r.add_get("/api/ps", self._ps)
        r.add_post("/api/show", self._show)
        r.add_post("/api/generate", self._generate)
        r.add_post("/api/chat", self._chat)
        r.add_post("/api/embed", self._embed)
        r.add_post("/api/embeddings", self._embed)
        r.add_post("/api/pull", self._pull)
        r.add_post("/api/create", self._create)
        r.add_post("/api/copy", self._copy)
        r.add_delete("/api/delete", self._delete)
        r.add_route("HEAD", "/api/blobs/{digest}", self._blob_head)
        r.add_post("/api/blobs/{digest}", self._blob_post)
        r.add_post("/v1/chat/completions", self._oa_chat)
        r.add_post("/v1/completions", self._oa_completion)
        r.add_get("/v1/models", self._oa_models)
        r.add_get("/v1/models/{model:.+}", self._oa_model)
        r.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"Ollama is running",
                            headers={"Content-Type": "text/plain; charset=utf-8"})

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, body=b"404 page not found",
                            headers={"Content-Type": "text/plain"})

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return _json({"version": self.version})

    def _details(self, m: FakeModel, *, tags: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"parent_model": "", "format": "gguf", "family": m.family,
                             "families": [m.family], "parameter_size": m.parameter_size,
                             "quantization_level": m.quantization_level}
        if tags and self._newer():
            d["context_length"] = m.context_length
            d["embedding_length"] = int(m.info("embedding_length", 0))
        return d

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        out = []
        for full, m in sorted(self.models.items(), key=lambda kv: -self._modified[kv[0]]):
            e: dict[str, Any] = {"name": full, "model": full, "modified_at": _ts(self._modified[full]),
                                 "size": m.weights_bytes, "digest": m.digest,
                                 "details": self._details(m, tags=True)}
            if self._newer():
                e["capabilities"] = list(m.capabilities)
            out.append(e)
        return _json({"models": out})

    async def _ps(self, request: web.Request) -> web.StreamResponse:
        states = sorted(self.loaded().values(), key=lambda s: -(s.expires_at_ns // 10**9))
        return _json({"models": [
            {"name": s.name, "model": s.name, "size": s.size, "digest": s.model.digest,
             "details": self._details(s.model), "expires_at": _ts(s.expires_at_ns),
             "size_vram": s.size_vram, "context_length": s.num_ctx} for s in states]})

    async def _show(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        name = body.get("model") or body.get("name") or ""
        m = self._find(str(name))
        if m is None:
            raise _ApiError(404, f"model '{_full_name(str(name)) if self._newer() else name}' not found")
        verbose = bool(body.get("verbose"))
        # getModelData: without verbose the GGUF reader skips every array (JSON null, as recorded)
        info = {k: (None if isinstance(v, list) and v and not verbose else v)
                for k, v in m.model_info.items() if k not in ("general.name", "tokenizer.chat_template")}
        params = _parse_params(m.parameters)
        modelfile = (f'# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this,'
                     f" replace FROM with:\n# FROM {m.full_name}\n\nFROM /usr/share/ollama/.ollama/"
                     f'models/blobs/sha256-{m.digest}\nTEMPLATE """{m.template}"""\n'
                     + "".join(f"PARAMETER {k} {v}\n" for k, vs in params.items() for v in vs))
        out: dict[str, Any] = {"modelfile": modelfile}
        if m.parameters:
            out["parameters"] = m.parameters
        out.update(template=m.template, details=self._details(m), model_info=info,
                   capabilities=list(m.capabilities), modified_at=_ts(self._modified[m.full_name]))
        return _json(out)

    # ------------------------------------------------------------ completions
    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, "generate")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, "chat")

    async def _native(self, request: web.Request, flavour: str) -> web.StreamResponse:
        t0 = time.monotonic_ns()
        body = await self._body(request)
        keep_alive = self._keep_alive(body)
        if self.fail_next:
            status, msg = self.fail_next.pop(0)
            raise _ApiError(status, msg)
        req_model, model = self._model(body)
        if "completion" not in model.capabilities:
            raise _ApiError(400, f'"{req_model}" does not support {flavour}')
        if flavour == "chat" and body.get("tools") and "tools" not in model.capabilities:
            raise _ApiError(400, f"registry.ollama.ai/library/{model.full_name} does not support tools")
        if body.get("think") not in (None, False) and "thinking" not in model.capabilities:
            raise _ApiError(400, f'"{req_model}" does not support thinking')
        opts = self._options(body)
        num_ctx = self._num_ctx(model, opts)
        if flavour == "generate":
            chars, empty = len(self._text(body.get("prompt"))), not body.get("prompt")
        else:
            msgs = [m for m in body.get("messages") or [] if isinstance(m, dict)]
            chars, empty = sum(len(self._text(m.get("content"))) for m in msgs), not msgs
        if empty:
            return await self._preload(flavour, req_model, model, num_ctx, keep_alive)
        gen = self._new_gen(flavour, request.path, req_model, model, num_ctx, keep_alive, chars,
                            opts.get("num_predict"), body.get("stream") is not False, t0)
        return await self._run(request, gen)

    async def _preload(self, flavour: str, req_model: str, model: FakeModel, num_ctx: int,
                       keep_alive: int | None) -> web.StreamResponse:
        """Empty prompt/messages: load (done_reason load) or, with keep_alive 0, unload now."""
        if keep_alive == 0:
            state = self._loaded.get(model.full_name)
            if state is not None:
                state.keep_alive_ns = 0
                if state.refcount == 0:
                    self._unload(state)
            reason = "unload"
        else:
            self._release(await self._acquire(model, num_ctx, keep_alive))
            reason = "load"
        out: dict[str, Any] = {"model": req_model, "created_at": _ts(time.time_ns())}
        if flavour == "generate":
            out["response"] = ""
        else:
            out["message"] = {"role": "assistant", "content": ""}
        out.update(done=True, done_reason=reason)
        return _json(out)

    def _new_gen(self, flavour: str, path: str, req_model: str, model: FakeModel, num_ctx: int,
                 keep_alive: int | None, chars: int, num_predict: Any, stream: bool,
                 t0: int) -> _Gen:
        prompt_tokens = max(1, math.ceil(chars / 4))
        truncated = prompt_tokens > num_ctx
        if truncated:  # real Ollama truncates silently
            self.truncated.append(path)
            prompt_tokens = num_ctx
        n, reason = self.reply_tokens, "stop"
        if isinstance(num_predict, int) and 0 <= num_predict <= self.reply_tokens:
            n, reason = num_predict, "length"
        self._oa_counter += 1
        return _Gen(flavour, req_model, model, num_ctx, keep_alive, prompt_tokens, n, reason,
                    stream, t0, oid=str(self._oa_counter), created=int(time.time()),
                    truncated=truncated)

    async def _run(self, request: web.Request, g: _Gen) -> web.StreamResponse:
        """Load if needed, then emit tokens (streamed line by line or as one JSON body)."""
        resp: web.StreamResponse | None = None
        state: LoadedState | None = None
        try:
            t_load, timing = time.monotonic_ns(), _LoadTiming()
            state = await self._acquire(g.model, g.num_ctx, g.keep_alive, timing)
            wall = time.monotonic_ns() - t_load
            g.load_ns = self._acquire_ns(wall, timing)
            g.sim_extra_ns += g.load_ns - wall
            g.load_ns = max(g.load_ns, 1_000_000)
            self.completions.append(Completion(request.path, state.name, state.num_ctx, state.spilled,
                                               g.truncated, g.prompt_tokens))
            t_slot = time.monotonic_ns()
            async with state.slots:
                wall = time.monotonic_ns() - t_slot
                g.sim_extra_ns += self._scaled_ns(wall) - wall
                delay = self.token_delay_s * (self.spill_slowdown if state.spilled else 1.0)
                prompt_s = delay * math.ceil(g.prompt_tokens / PROMPT_TOKENS_PER_STEP)
                t = time.monotonic_ns()
                await self._pause(request, prompt_s / self.time_scale)
                wall = time.monotonic_ns() - t
                g.prompt_ns = max(self._compressed_ns(wall, prompt_s), 1)
                g.sim_extra_ns += g.prompt_ns - wall
                t = time.monotonic_ns()
                if g.stream:
                    sse = g.flavour.startswith("oa_")
                    resp = web.StreamResponse(headers={
                        "Content-Type": "text/event-stream" if sse else "application/x-ndjson"})
                    await resp.prepare(request)
                for i in range(g.n_tokens):
                    if resp is not None:
                        await self._emit(resp, g, self._chunk(g, i))
                        if i == 0 and self.hold is not None:
                            await self._wait_hold(request, self.hold)
                    await self._pause(request, delay / self.time_scale)
                wall = time.monotonic_ns() - t
                g.eval_ns = max(self._compressed_ns(wall, delay * g.n_tokens), 1)
                g.sim_extra_ns += g.eval_ns - wall
                if resp is None:
                    ct = "application/json" if g.flavour.startswith("oa_") else JSON_CT
                    return _json(self._final(g, whole=True), content_type=ct)
                for obj in self._tail(g):
                    await self._emit(resp, g, obj)
                await resp.write_eof()
                return resp
        except asyncio.CancelledError:
            self.cancelled.append(request.path)
            raise
        except ConnectionResetError:
            self.cancelled.append(request.path)
            return resp if resp is not None else web.Response(status=499)
        finally:
            if state is not None:
                self._release(state)

    @staticmethod
    def _gone(request: web.Request) -> bool:
        t = request.transport
        return t is None or t.is_closing()

    async def _pause(self, request: web.Request, seconds: float) -> None:
        """Sleep, noticing a client that went away (run_app does not cancel handlers)."""
        end = time.monotonic() + seconds
        while True:
            if self._gone(request):
                raise ConnectionResetError("client went away")
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.02))

    async def _wait_hold(self, request: web.Request, hold: asyncio.Event) -> None:
        while not hold.is_set():
            await self._pause(request, 0.01)

    @staticmethod
    async def _emit(resp: web.StreamResponse, g: _Gen, obj: Any) -> None:
        """One NDJSON line or SSE event per HTTP chunk, as Ollama flushes them."""
        line = (f"data: {obj}\n\n" if obj == "[DONE]" else f"data: {_dumps(obj)}\n\n") \
            if g.flavour.startswith("oa_") else _dumps(obj) + "\n"
        await resp.write(line.encode())

    def _chunk(self, g: _Gen, i: int) -> dict[str, Any]:
        text = f"tok{i} "
        if g.flavour == "generate":
            return {"model": g.req_model, "created_at": _ts(time.time_ns()), "response": text,
                    "done": False}
        if g.flavour == "chat":
            return {"model": g.req_model, "created_at": _ts(time.time_ns()),
                    "message": {"role": "assistant", "content": text}, "done": False}
        if g.flavour == "oa_chat":
            delta = {"role": "assistant", "content": text} if i == 0 else {"content": text}
            return {**self._oa_head(g, "chat.completion.chunk"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        return {"id": f"cmpl-{g.oid}", "object": "text_completion", "created": g.created,
                "choices": [{"text": text, "index": 0, "finish_reason": None}],
                "model": g.req_model, "system_fingerprint": "fp_ollama"}

    @staticmethod
    def _oa_head(g: _Gen, obj: str) -> dict[str, Any]:
        prefix = "chatcmpl" if g.flavour == "oa_chat" else "cmpl"
        return {"id": f"{prefix}-{g.oid}", "object": obj, "created": g.created,
                "model": g.req_model, "system_fingerprint": "fp_ollama"}

    @staticmethod
    def _usage(g: _Gen) -> dict[str, int]:
        return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.n_tokens,
                "total_tokens": g.prompt_tokens + g.n_tokens}

    def _tail(self, g: _Gen) -> list[Any]:
        """What follows the token chunks of a stream."""
        if g.flavour == "oa_chat":
            out: list[Any] = [{**self._oa_head(g, "chat.completion.chunk"), "choices": [
                {"index": 0, "delta": {}, "finish_reason": g.done_reason}]}]
            if g.include_usage:
                out.append({**self._oa_head(g, "chat.completion.chunk"), "choices": [],
                            "usage": self._usage(g)})
            return [*out, "[DONE]"]
        if g.flavour == "oa_completion":
            return [{**self._chunk(g, 0), "choices": [
                {"text": "", "index": 0, "finish_reason": g.done_reason}]}, "[DONE]"]
        return [self._final(g, whole=False)]

    def _final(self, g: _Gen, *, whole: bool) -> dict[str, Any]:
        """The done:true object (whole=True: the non-streamed body, carrying the full text)."""
        text = "".join(f"tok{i} " for i in range(g.n_tokens)) if whole else ""
        if g.flavour == "oa_chat":
            return {**self._oa_head(g, "chat.completion"), "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": g.done_reason}], "usage": self._usage(g)}
        if g.flavour == "oa_completion":
            return {**self._oa_head(g, "text_completion"), "choices": [
                {"text": text, "index": 0, "finish_reason": g.done_reason}], "usage": self._usage(g)}
        out: dict[str, Any] = {"model": g.req_model, "created_at": _ts(time.time_ns())}
        if g.flavour == "generate":
            out["response"] = text
        else:
            out["message"] = {"role": "assistant", "content": text}
        out.update(done=True, done_reason=g.done_reason)
        if g.flavour == "generate":
            out["context"] = list(range(1, g.prompt_tokens + g.n_tokens + 1))
        metrics = {"total_duration": time.monotonic_ns() - g.t0 + g.sim_extra_ns, "load_duration": g.load_ns,
                   "prompt_eval_count": g.prompt_tokens, "prompt_eval_duration": g.prompt_ns,
                   "eval_count": g.n_tokens, "eval_duration": g.eval_ns}
        out.update({k: v for k, v in metrics.items() if v})  # Go omits zero values
        return out

    # ------------------------------------------------------------ OpenAI compatibility
    async def _oa_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._oa(request, "oa_chat")

    async def _oa_completion(self, request: web.Request) -> web.StreamResponse:
        return await self._oa(request, "oa_completion")

    async def _oa(self, request: web.Request, flavour: str) -> web.StreamResponse:
        """/v1 routes take no num_ctx/keep_alive/options: Modelfile or default num_ctx applies."""
        t0 = time.monotonic_ns()
        body = await self._body(request)
        if self.fail_next and flavour == "oa_chat":
            status, msg = self.fail_next.pop(0)
            raise _ApiError(status, msg)
        req_model, model = self._model(body)
        if flavour == "oa_chat":
            msgs = [m for m in body.get("messages") or [] if isinstance(m, dict)]
            chars = sum(len(self._text(m.get("content"))) for m in msgs)
        else:
            chars = len(self._text(body.get("prompt")))
        gen = self._new_gen(flavour, request.path, req_model, model, self._num_ctx(model, {}),
                            None, chars, body.get("max_tokens"), body.get("stream") is True, t0)
        gen.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._run(request, gen)

    async def _oa_models(self, request: web.Request) -> web.StreamResponse:
        data = [{"id": full, "object": "model", "created": self._modified[full] // 10**9,
                 "owned_by": "library"} for full in self.models]
        return _json({"object": "list", "data": data}, content_type="application/json")

    async def _oa_model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        m = self._find(name)
        if m is None:
            raise _ApiError(404, f"model '{_full_name(name) if self._newer() else name}' not found")
        return _json({"id": name, "object": "model", "created": self._modified[m.full_name] // 10**9,
                      "owned_by": "library"}, content_type="application/json")

    # ------------------------------------------------------------ embeddings
    async def _embed(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic_ns()
        body = await self._body(request)
        keep_alive = self._keep_alive(body)
        req_model, model = self._model(body)
        if "embedding" not in model.capabilities:
            raise _ApiError(501, "This server does not support embeddings. Start it with "
                            "`--embeddings`" if self._newer() else "this model does not support embeddings")
        num_ctx = self._num_ctx(model, self._options(body))
        legacy = request.path == "/api/embeddings"
        raw = body.get("prompt", "") if legacy else body.get("input", "")
        texts = [str(x) for x in raw] if isinstance(raw, list) else [str(raw)]
        timing = _LoadTiming()
        state = await self._acquire(model, num_ctx, keep_alive, timing)
        wall = time.monotonic_ns() - t0
        sim_extra_ns = self._acquire_ns(wall, timing) - wall
        load_ns = max(wall + sim_extra_ns, 1_000_000)
        self._release(state)
        dims = int(model.info("embedding_length", 8))
        vecs = []
        for t in texts:
            rnd = random.Random(hashlib.sha256(t.encode()).digest())
            v = [rnd.gauss(0.0, 1.0) for _ in range(dims)]
            norm = math.sqrt(sum(x * x for x in v)) or 1.0
            vecs.append([x / norm for x in v])
        if legacy:
            return _json({"embedding": vecs[0]})
        tokens = sum(max(1, math.ceil(len(t) / 4)) for t in texts)
        return _json({"model": req_model, "embeddings": vecs,
                      "total_duration": time.monotonic_ns() - t0 + sim_extra_ns, "load_duration": load_ns,
                      "prompt_eval_count": tokens})

    # ------------------------------------------------------------ model management
    async def _status_stream(self, request: web.Request, body: dict[str, Any],
                             statuses: list[dict[str, Any]], error: str | None) -> web.StreamResponse:
        """Progress as NDJSON (stream absent = true); an error after the start is one more line."""
        if body.get("stream") is False:
            if error is not None:
                raise _ApiError(500, error)
            return _json(statuses[-1])
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for s in [*statuses, *([{"error": error}] if error is not None else [])]:
            await resp.write((_dumps(s) + "\n").encode())
        await resp.write_eof()
        return resp

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        name = str(body.get("model") or body.get("name") or "")
        m = self._find(name) or self.registry.get(_full_name(name))
        if m is None:
            return await self._status_stream(request, body, [{"status": "pulling manifest"}],
                                             "pull model manifest: file does not exist")
        self._add_model(m)
        w = m.weights_bytes
        return await self._status_stream(request, body, [
            {"status": "pulling manifest"},
            {"status": f"pulling {m.digest[:12]}", "digest": f"sha256:{m.digest}", "total": w,
             "completed": w},
            {"status": "verifying sha256 digest"}, {"status": "writing manifest"},
            {"status": "success"}], None)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        """Derived models: ``from`` an existing model plus ``parameters`` (e.g. num_ctx)."""
        body = await self._body(request)
        name = str(body.get("model") or body.get("name") or "")
        if not name:
            raise _ApiError(400, "invalid model name")
        files = body.get("files") or {}
        base = self._find(str(body.get("from") or ""))
        if base is None and not files:
            if body.get("from"):
                return await self._status_stream(request, body, [{"status": "pulling manifest"}],
                                                 "pull model manifest: file does not exist")
            raise _ApiError(400, "neither 'from' or 'files' was specified")
        for digest in files.values() if isinstance(files, dict) else []:
            if str(digest).replace("-", ":") not in self.blobs:
                raise _ApiError(400, f"blob {digest} not found")  # approximate wording
        base = base or gemma3_270m()  # a GGUF uploaded as a blob is served as the 270M model
        params = _parse_params(base.parameters)
        for k, v in (body.get("parameters") or {}).items():
            params[k] = list(v) if isinstance(v, list) else [v]
        new = replace(base, name=name, digest=hashlib.sha256(name.encode()).hexdigest(),
                      parameters=_param_lines(params),
                      template=str(body.get("template") or base.template))
        self._add_model(new)
        return await self._status_stream(request, body, [
            {"status": f"using existing layer sha256:{base.digest}"},
            {"status": "writing manifest"}, {"status": "success"}], None)

    async def _copy(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        src, dst = str(body.get("source") or ""), str(body.get("destination") or "")
        m = self._find(src)
        if m is None:
            raise _ApiError(404, f"model {json.dumps(src)} not found")
        if not dst:
            raise _ApiError(400, "invalid destination name")
        self._add_model(replace(m, name=dst))
        return web.Response(status=200)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        _, m = self._model(body)
        del self.models[m.full_name]
        return web.Response(status=200)

    async def _blob_head(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"].replace("-", ":")
        return web.Response(status=200 if digest in self.blobs else 404)

    async def _blob_post(self, request: web.Request) -> web.StreamResponse:
        """Stream the upload through sha256, counting bytes as they come; never buffer it."""
        digest = request.match_info["digest"]
        if not _DIGEST.fullmatch(digest):
            raise _ApiError(400, "invalid digest format")
        digest = digest.replace("-", ":")
        if digest in self.blobs:
            return web.Response(status=200)
        h = hashlib.sha256()
        self.blob_bytes_received[digest] = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            self.blob_bytes_received[digest] += len(chunk)
        if f"sha256:{h.hexdigest()}" != digest:
            raise _ApiError(400, "digest mismatch")
        self.blobs.add(digest)
        return web.Response(status=201)


def _json(obj: Any, status: int = 200, content_type: str = JSON_CT) -> web.Response:
    """A JSON body with Content-Length, encoded the way Go's encoding/json does."""
    return web.Response(status=status, body=_dumps(obj).encode(),
                        headers={"Content-Type": content_type})
