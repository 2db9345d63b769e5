"""What a policy sees: one frozen ``Context`` per request, built before the chain runs.

Everything here is plain, immutable data gathered off the request path (GPU samples, ``/api/show``,
``/api/ps``), so a policy is a pure function of it and is tested without a server.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from policies.duration import KeepAlive
from policies.model import ModelFacts, uses_llama_server
from policies.records import cheap_init

if TYPE_CHECKING:
    from policies.memory import Calibration

Endpoint = Literal[
    "generate",
    "chat",
    "embed",
    "embeddings",
    "openai.chat",
    "openai.completions",
    "openai.embeddings",
    "openai.responses",
    "anthropic.messages",
]
"""The route a request came in on: Ollama's native ``/api/generate``, ``/api/chat``,
``/api/embed`` and ``/api/embeddings``, or an OpenAI- or Anthropic-style ``/v1`` route (which the
governor sends to Ollama as the matching native call, so that ``num_ctx`` and ``keep_alive`` can
be set)."""


class FrozenJSON(Mapping[str, Any]):
    """A read-only view of a parsed JSON object: nested objects are views, arrays are tuples.

    Wrapping is lazy, so a request with a long message history costs nothing until a policy
    actually looks inside it.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return freeze(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"FrozenJSON({list(self._data)!r})"


def freeze(value: Any) -> Any:
    """Read-only form of a JSON value."""
    if isinstance(value, dict):
        return FrozenJSON(value)
    if isinstance(value, list):
        return tuple(freeze(item) for item in value)
    return value


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One device as last sampled: a GPU (NVML, amdgpu sysfs, or config minus ``/api/ps``), Apple's
    unified memory (total is the GPU working-set limit), or system RAM on a CPU-only host."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    utilization_pct: int | None = None


MemoryKind = Literal["gpu", "unified", "system", "unknown"]
"""What memory a snapshot's devices are; see ``GpuSnapshot.kind``."""

SOURCE_KINDS: Mapping[str, MemoryKind] = {
    "nvml": "gpu",
    "amdgpu": "gpu",
    "ollama": "gpu",
    "apple": "unified",
    "system": "system",
}
"""The kind each of the governor's memory sources reads (``none`` and anything else: unknown)."""

BACKENDS: Mapping[str, str] = {"nvml": "cuda", "amdgpu": "rocm", "apple": "metal", "system": "cpu"}
"""The compute backend behind each memory source that names one (``GpuSnapshot.backend``)."""


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """The memory Ollama runs models in, as of ``taken_at`` (unix seconds).

    ``devices`` is empty when the state is unknown (no source, a failure); then ``error`` says why
    and policies decide without a memory budget.

    ``kind`` says what the devices are, and so where a loaded model lives:

    * ``"gpu"``: discrete VRAM (sources ``nvml``, ``amdgpu``, ``ollama``). A model with
      ``/api/ps`` ``size_vram < size`` has spilled into system RAM.
    * ``"unified"``: Apple Silicon (source ``apple``). One device whose total is the GPU
      working-set limit Metal allows, out of RAM the CPU shares; ``size_vram < size`` is still
      a spill (layers left to the CPU).
    * ``"system"``: CPU inference (source ``system``): the device is system RAM. Ollama reports
      ``size_vram`` 0 for every model, which is not a spill; the analogue of a spill is swapping.
    * ``"unknown"``: no memory source (``none``), or ``auto`` before its first read.

    The kind describes the host, so it stays when a read fails: a GPU host whose driver
    hiccups is still a GPU host. Sources set it; a snapshot built with one of the source names
    above and no kind gets that source's kind.
    """

    source: str
    devices: tuple[GpuDevice, ...] = ()
    taken_at: float = 0.0
    error: str | None = None
    reserve_bytes: int = 0
    kind: MemoryKind = "unknown"

    def __post_init__(self) -> None:
        if self.kind == "unknown" and self.source in SOURCE_KINDS:
            object.__setattr__(self, "kind", SOURCE_KINDS[self.source])

    @property
    def known(self) -> bool:
        """True when at least one device was read."""
        return bool(self.devices)

    @property
    def backend(self) -> str:
        """The compute backend Ollama runs models on here, as far as the source tells: ``cuda``
        (NVML), ``rocm`` (amdgpu), ``metal`` (Apple), ``cpu`` (system memory), else ``gpu`` (a GPU
        of unknown make) or ``unknown``. Compute buffers differ by backend."""
        if self.kind == "system":
            return "cpu"
        return BACKENDS.get(self.source, "gpu" if self.kind in ("gpu", "unified") else "unknown")

    @property
    def gpu_count(self) -> int:
        """GPUs a load may be split over (each keeps a compute buffer): every device of a
        discrete-GPU host, else 1."""
        return len(self.devices) if self.kind == "gpu" and self.devices else 1

    @property
    def free_bytes(self) -> int | None:
        """Free memory summed over the devices, or None when unknown."""
        return sum(d.free_bytes for d in self.devices) if self.devices else None

    @property
    def total_bytes(self) -> int | None:
        """Total memory summed over the devices, or None when unknown."""
        return sum(d.total_bytes for d in self.devices) if self.devices else None


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model Ollama holds in memory, from ``/api/ps``.

    ``spilled`` is true only when the host has a GPU and part of the model sits in system RAM;
    on a CPU-only host Ollama reports ``size_vram`` 0 for everything, which is not a spill.

    ``provisional`` is true between the governor sending a request that (re)loads the model
    at ``context_length`` and the next ``/api/ps`` read: the context is what Ollama is loading,
    the sizes are not known yet (0). It lets a second request arriving during the load reuse
    the same context instead of triggering another reload.
    """

    name: str
    digest: str
    size_bytes: int
    size_vram_bytes: int
    context_length: int | None
    expires_at: str | None
    spilled: bool = False
    provisional: bool = False


FlashAttention = Literal["auto", "on", "off"]

DEFAULT_FIT_TARGET_BYTES: Final = 1024 << 20
"""llama.cpp ``--fit`` keeps ``LLAMA_ARG_FIT_TARGET`` MiB (default 1024) free on each device."""


@dataclass(frozen=True, slots=True)
class OllamaServer:
    """How the Ollama server runs: its version and the environment the scheduler reads.

    ``num_parallel`` is ``OLLAMA_NUM_PARALLEL``, ``kv_cache_type`` ``OLLAMA_KV_CACHE_TYPE``,
    ``max_loaded_models`` ``OLLAMA_MAX_LOADED_MODELS`` (0: automatic), ``flash_attention``
    ``OLLAMA_FLASH_ATTENTION`` (``auto`` resolves to on where the GPUs support it),
    ``keep_alive_s`` ``OLLAMA_KEEP_ALIVE`` in seconds (``math.inf``: forever), ``gpu_overhead_bytes``
    ``OLLAMA_GPU_OVERHEAD`` and ``fit_target_bytes`` ``LLAMA_ARG_FIT_TARGET``. ``version`` None
    means the newest rules.
    """

    version: tuple[int, int, int] | None = None
    num_parallel: int = 1
    kv_cache_type: str = "f16"
    max_loaded_models: int = 0
    flash_attention: FlashAttention = "auto"
    keep_alive_s: float = 300.0
    gpu_overhead_bytes: int = 0
    fit_target_bytes: int = DEFAULT_FIT_TARGET_BYTES

    @property
    def llama_server(self) -> bool:
        """Ollama 0.30 or later (or unknown): every model runs in llama.cpp's ``llama-server``."""
        return uses_llama_server(self.version)


@dataclass(frozen=True, slots=True)
class Resident:
    """One runner Ollama holds: its ``/api/ps`` entry, and what else the scheduler compares.

    ``facts`` (when known) lets the model add back what ``/api/ps`` leaves out of a sliding-window
    model's size. ``keep_alive_s`` is the runner's session duration (the last keep_alive a request
    gave it; None: the server's default; ``math.inf`` or negative: forever) and ``model_path`` its
    GGUF blob (the Modelfile's ``FROM``), the two keys eviction order sorts by; without a path the
    name stands in. ``busy`` means requests are in flight, so eviction passes it over while an idle
    runner exists. ``num_ctx_auto`` says its context was Ollama's automatic choice.
    """

    loaded: LoadedModel
    facts: ModelFacts | None = None
    keep_alive_s: float | None = None
    busy: bool = False
    model_path: str | None = None
    num_ctx_auto: bool = False

    @property
    def name(self) -> str:
        """The name ``/api/ps`` shows."""
        return self.loaded.name


@cheap_init
@dataclass(frozen=True, slots=True)
class Context:
    """Everything a policy may read about one ``/api/generate`` or ``/api/chat`` request.

    Attributes:
        endpoint: the route (``Endpoint``): ``"generate"``, ``"chat"``, ``"embed"``, ... or
            ``"openai.chat"``, ``"anthropic.messages"``, ... for the ``/v1`` routes.
        model_name: the model exactly as the client sent it (``"llama3.1"``, ``"gemma3:27b"``).
        body: a read-only view of the client's JSON body (on a ``/v1`` route, the native body it
            was translated to). Prompts and messages are here for policies that need them; never
            log them.
        client: the client's address, or None when unknown.
        headers: the client's request headers (read-only).
        client_num_ctx: ``options.num_ctx`` the client sent, or None.
        client_keep_alive: ``keep_alive`` the client sent, or None.
        num_predict: ``options.num_predict`` the client sent, or None (room to keep for the reply).
        prompt_tokens: an estimate of the prompt's tokens, or None when unknown.
        gpu: the last memory sample (GPU VRAM, unified memory or system RAM: ``gpu.kind``), or
            None when no sampler runs.
        model: facts about the model from ``/api/show`` and ``/api/tags``, or None when unknown.
        loaded: this model as ``/api/ps`` last showed it, or None when it is not loaded.
        all_loaded: every model Ollama holds, this one included.
        ollama_version: Ollama's version as (major, minor, patch), or None when unknown.
        default_num_ctx: the context Ollama loads this model at when a request names none (its
            Modelfile ``num_ctx``, else ``OLLAMA_CONTEXT_LENGTH``, else the server's VRAM tier,
            clamped to the trained length), or None when unknown. A request without ``num_ctx``
            after one that set another value reloads the model at this size.
        num_parallel: ``OLLAMA_NUM_PARALLEL`` as configured for the governor (KV cache scales with it).
        kv_cache_type: ``OLLAMA_KV_CACHE_TYPE`` as configured (f16, q8_0, q4_0).
        flash_attention: False when ``OLLAMA_FLASH_ATTENTION=0`` (configured): the attention
            scores then take memory, and a quantised V cache cannot be used.
        residents: every runner Ollama holds, with what the scheduler model
            (``policies.scheduler``) needs of each: facts, blob, the keep_alive it was last sent.
        server: how the Ollama server runs, for the scheduler model; None when not known.
        calibration: the correction learnt from this model's past loads (same digest, parallel,
            cache type and version), or None; pass it to the ``policies.memory`` estimates so
            they match what Ollama really allocates.
    """

    endpoint: Endpoint
    model_name: str
    body: Mapping[str, Any]
    client: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: FrozenJSON({}))
    client_num_ctx: int | None = None
    client_keep_alive: KeepAlive | None = None
    num_predict: int | None = None
    prompt_tokens: int | None = None
    gpu: GpuSnapshot | None = None
    model: ModelFacts | None = None
    loaded: LoadedModel | None = None
    all_loaded: tuple[LoadedModel, ...] = ()
    ollama_version: tuple[int, int, int] | None = None
    default_num_ctx: int | None = None
    num_parallel: int = 1
    kv_cache_type: str = "f16"
    flash_attention: bool = True
    residents: tuple[Resident, ...] = ()
    server: OllamaServer | None = None
    calibration: Calibration | None = None
