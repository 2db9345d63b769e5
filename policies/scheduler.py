"""What Ollama's scheduler does with one more load: reuse, reload, load beside, evict, or spill.

A governor that picks ``num_ctx`` has to know more than whether a model fits: whether Ollama
reuses the runner it has, replaces it, unloads another model first, or starts the model with part
of it in system RAM. Ollama decides that with its own estimate (``PredictServerVRAM``, blind to
sliding windows and the cache type) and a few fixed rules, while the memory fills with what
llama.cpp really allocates. This module plays those rules on plain data: the loaded runners
(``Resident``), the memory (``Budget``), how the server runs (``OllamaServer``) and the request
(``Candidate``); ``predict`` returns a frozen ``Prediction``.

The rules, from Ollama's source at v0.33.0-rc2 (docs/ollama-rules.md §2, §3, §5; the project's
facts file §2-§3), in the order ``server/sched.go processPending`` applies them:

1. A runner for the same GGUF blob is reused unless ``needsReload`` (``policies.ollama``); then it
   is unloaded first (a reload), and what it held is free again.
2. ``len(loaded) >= OLLAMA_MAX_LOADED_MODELS`` (0: three per GPU) unloads ``findRunnerToUnload``'s
   choice, and the loop starts over.
3. With other runners loaded and the load going to GPUs (``load`` with ``requireFull``), the
   pre-flight: Ollama's estimate plus the batch surcharge above 80% of free memory
   (``availableMemoryForPlacement``, after ``updateFreeSpace``) unloads one more runner, and the
   loop starts over; with nothing left loaded the model loads without that check.
4. llama.cpp ``--fit`` then places what fits, keeping ``LLAMA_ARG_FIT_TARGET`` (1 GiB) free on the
   device, and the rest of the layers run from system RAM: a spill.

``findRunnerToUnload`` sorts by session duration (``uint64``, so a negative keep_alive, forever,
sorts last) and then by model path (the blob), and takes the first idle runner, else the first.
Before 0.30 (``version`` below (0, 30, 0)) the older estimate applies: ``fs/ggml GraphSize`` for
models on the llama.cpp runner, real allocations for those on Ollama's own engine, compared with
free memory minus the 457 MiB minimum (512 MiB on Metal) and ``OLLAMA_GPU_OVERHEAD``; Ollama chose
the offloaded layers itself, so a spill follows its estimate, not the real footprint.

Everything is arithmetic on frozen values: no I/O, no clocks. ``policies.memory`` gives the
footprints, ``policies.ollama`` Ollama's own rules.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, get_args

from policies.context import DEFAULT_FIT_TARGET_BYTES as DEFAULT_FIT_TARGET_BYTES
from policies.context import FlashAttention as FlashAttention
from policies.context import GpuSnapshot, LoadedModel, MemoryKind
from policies.context import OllamaServer as OllamaServer
from policies.context import Resident as Resident
from policies.memory import (
    GIB,
    MIB,
    Calibration,
    MemoryEstimate,
    effective_parallel,
    estimate,
    format_bytes,
    legacy_predicted_bytes,
    ollama_predicted_bytes,
    ps_unreported_bytes,
)
from policies.model import ModelFacts
from policies.ollama import (
    DEFAULT_NUM_BATCH,
    EVICTION_THRESHOLD_PERCENT,
    MIN_NUM_CTX,
    RunnerOptions,
    automatic_num_batch,
    batch_surcharge_bytes,
    loaded_num_ctx,
    max_loaded_models,
    needs_reload,
    preflight_evicts,
)
from policies.records import cheap_init

Version = tuple[int, int, int]

Action = Literal["reuse", "reload", "load", "evict", "spill"]
"""What Ollama does with a request for a model (``Prediction.action``):

* ``reuse``: a runner for the same blob is loaded with the same load-time options; nothing loads.
* ``reload``: the model's own runner is replaced (another ``num_ctx``); nothing else unloads.
* ``load``: the model loads beside what is loaded, fully in memory.
* ``evict``: Ollama unloads other models first (``Prediction.evicted``), then loads fully.
* ``spill``: after any evictions the model still does not fit; llama.cpp runs layers from system
  RAM (on a CPU-only host: it does not fit in free RAM).
"""
ACTIONS: Final[tuple[str, ...]] = get_args(Action)

EvictionCause = Literal["max_loaded_models", "preflight"]
"""Why a runner was unloaded: the loaded-model cap, or Ollama's pre-flight memory estimate."""

MINIMUM_MEMORY_BYTES: Final = 457 * MIB
"""Before 0.30 layer fitting kept a GPU's ``MinimumMemory`` free: 457 MiB (CUDA, ROCm) ..."""
METAL_MINIMUM_MEMORY_BYTES: Final = 512 * MIB
"""... and 512 MiB on Metal (``ml/device.go``)."""

SMALL_GPU_BYTES: Final = 8 * GIB
"""``constrainedCUDAWithoutFlashAttention``: a CUDA GPU with at most this much free memory."""

OLLAMA_ENGINE_ARCHITECTURES: Final = frozenset(
    {"gemma3", "gemma3n", "mistral3", "qwen3", "llama4", "mllama", "qwen25vl", "gpt-oss"}
)
"""``OllamaEngineRequired`` at v0.12: before 0.30 these ran on Ollama's own engine, which sized a
load from real backend allocations rather than ``GraphSize``."""

_FOREVER_NS: Final = (1 << 64) - 1
"""``uint64(sessionDuration)`` of a negative keep_alive: it sorts after every finite one."""

_MAX_SCAN: Final = 512
"""``largest_loadable_ctx`` widens its step so that it predicts at most this many contexts."""


@cheap_init
@dataclass(frozen=True, slots=True)
class Budget:
    """The memory Ollama loads into, as the governor's memory source reads it now.

    ``free_bytes`` is what is free with every loaded runner in place (NVML's figure on a GPU,
    ``MemAvailable`` on a CPU-only host); ``None`` means unknown, and then no fit can be judged.
    ``kind`` says what the memory is (``GpuSnapshot.kind``); on ``"system"`` Ollama has no GPU,
    so its pre-flight never runs and ``gpu_count`` is 0. ``cuda`` says the GPUs are NVIDIA's,
    where flash attention off constrains the automatic batch.
    """

    free_bytes: int | None
    total_bytes: int | None = None
    kind: MemoryKind = "gpu"
    gpu_count: int = 1
    cuda: bool = True

    @classmethod
    def from_snapshot(cls, snapshot: GpuSnapshot | None, *, cuda: bool | None = None) -> Budget:
        """The budget a memory sample describes; an unknown sample gives an unknown budget.

        ``cuda`` defaults to whether NVML read the sample.
        """
        if snapshot is None:
            return cls(free_bytes=None, kind="unknown")
        on_cuda = snapshot.source == "nvml" if cuda is None else cuda
        gpus = 0 if snapshot.kind == "system" else max(len(snapshot.devices), 1)
        if not snapshot.known:
            return cls(free_bytes=None, kind=snapshot.kind, gpu_count=gpus, cuda=on_cuda)
        return cls(snapshot.free_bytes, snapshot.total_bytes, snapshot.kind, gpus, on_cuda)

    @property
    def known(self) -> bool:
        """True when the free memory is known."""
        return self.free_bytes is not None

    @property
    def on_gpu(self) -> bool:
        """Loads go to GPUs (discrete or unified): Ollama's pre-flight and llama.cpp's fit apply."""
        return self.kind in ("gpu", "unified")


@cheap_init
@dataclass(frozen=True, slots=True)
class Candidate:
    """A request that needs ``model`` loaded at ``num_ctx`` (per slot, before Ollama's clamps).

    ``num_ctx_auto`` marks Ollama's own default (no ``num_ctx`` in request, Modelfile or
    environment), ``num_batch`` an explicit batch (None: Ollama's automatic choice), ``keep_alive_s``
    the keep_alive it sends (None: the server's), ``model_path`` its blob and ``calibration`` the
    correction learnt from this model's earlier loads on this host.
    """

    model: ModelFacts
    num_ctx: int
    num_ctx_auto: bool = False
    num_batch: int | None = None
    keep_alive_s: float | None = None
    model_path: str | None = None
    calibration: Calibration | None = None


@dataclass(frozen=True, slots=True)
class Eviction:
    """A runner Ollama unloads before the load, why, and the memory that frees.

    For a pre-flight eviction, ``preflight_bytes`` (Ollama's estimate plus the batch surcharge)
    exceeded ``threshold_bytes`` as that check saw them.
    """

    name: str
    cause: EvictionCause
    freed_bytes: int
    preflight_bytes: int | None = None
    threshold_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """What Ollama does with one request, with the figures it decides on.

    ``footprint`` is the real allocation (``policies.memory.estimate`` at the batch Ollama picks,
    calibrated when the candidate carries a calibration); ``ollama_estimate_bytes`` is Ollama's own
    prediction (``PredictServerVRAM``; before 0.30 its older estimate), ``batch_surcharge_bytes``
    what its pre-flight adds for a large batch and ``threshold_bytes`` the line their sum must stay
    under (80% of free from 0.30; before, free less the minimum and ``OLLAMA_GPU_OVERHEAD``), as
    the last check saw it. ``free_bytes`` is the memory free once the evictions and the model's own
    unload are done; ``gpu_bytes`` what goes to the GPU and ``spill_bytes`` what runs from system
    RAM. ``fits`` is None when the budget is unknown. ``notes`` say what the model could not know.
    """

    action: Action
    model_name: str
    num_ctx: int
    """The per-slot context the runner holds (clamped to the trained length, floors applied)."""
    parallel: int
    num_batch: int
    reloads: bool
    """The model's own runner is replaced first (true for ``reload``, and for an ``evict`` or
    ``spill`` that also replaces it)."""
    evicted: tuple[Eviction, ...]
    footprint: MemoryEstimate
    ollama_estimate_bytes: int
    batch_surcharge_bytes: int
    threshold_bytes: int | None
    free_bytes: int | None
    gpu_bytes: int | None
    spill_bytes: int | None
    fits: bool | None
    reason: str
    notes: tuple[str, ...] = ()

    @property
    def evicted_names(self) -> tuple[str, ...]:
        """The names of the runners unloaded first, in Ollama's order."""
        return tuple(eviction.name for eviction in self.evicted)

    @property
    def preflight_bytes(self) -> int:
        """What Ollama's pre-flight compares with its threshold: its estimate plus the surcharge."""
        return self.ollama_estimate_bytes + self.batch_surcharge_bytes


@dataclass(frozen=True, slots=True)
class WorkingSet:
    """Several models requested one after another: what each load does and what stays loaded."""

    steps: tuple[Prediction, ...]
    resident: tuple[str, ...]
    """The runners loaded at the end, in load order (``/api/ps`` names)."""

    @property
    def side_by_side(self) -> bool:
        """Every requested model is still loaded at the end, and none spilled."""
        wanted = {_canonical(step.model_name) for step in self.steps}
        return wanted <= {_canonical(name) for name in self.resident} and all(
            step.fits is not False for step in self.steps
        )

    @property
    def contexts(self) -> dict[str, int]:
        """The context each model was loaded (or reused) at, by requested name."""
        return {step.model_name: step.num_ctx for step in self.steps}


# -- the prediction -------------------------------------------------------------------------------


def predict(
    candidate: Candidate,
    loaded: Sequence[Resident] = (),
    budget: Budget = Budget(free_bytes=None, kind="unknown"),
    server: OllamaServer = OllamaServer(),
) -> Prediction:
    """What Ollama does when ``candidate`` arrives with ``loaded`` held and ``budget`` free.

    Raises ``IncompleteModelFacts`` (a ``ValueError``) when the candidate's facts lack what an
    estimate needs, and ``ValueError`` for an unknown cache type.
    """
    model = candidate.model
    parallel = effective_parallel(model, server.num_parallel)
    num_ctx, own, reuses = _serving(candidate, loaded, server)
    if own is not None and reuses:
        return _reuse(candidate, own, parallel, budget, server)
    residents = list(loaded)
    notes: list[str] = []
    free = budget.free_bytes
    reloads = False
    if own is not None:
        reloads = True
        residents.remove(own)
        if free is not None:
            free += held_bytes(own, budget, server)

    cap = _cap(server, budget)
    evicted: list[Eviction] = []
    while residents:
        if len(residents) >= cap:
            victim = _victim(residents, server)
            eviction = Eviction(victim.name, "max_loaded_models", held_bytes(victim, budget, server))
        else:
            check = _launch(candidate, num_ctx, parallel, residents, free, budget, server)
            if not check.evicts:
                break
            victim = _victim(residents, server)
            eviction = Eviction(
                victim.name,
                "preflight",
                held_bytes(victim, budget, server),
                check.estimate_bytes + check.surcharge_bytes,
                check.threshold_bytes,
            )
        evicted.append(eviction)
        residents.remove(victim)
        if free is not None:
            free += eviction.freed_bytes

    launch = _launch(candidate, num_ctx, parallel, residents, free, budget, server)
    footprint = load_footprint(
        model, num_ctx, parallel, budget, server, calibration=candidate.calibration, n_ubatch=launch.num_batch
    )
    gpu_bytes, spills = _placement(footprint.total_bytes, launch, free, budget, server)
    if budget.known and residents and not budget.on_gpu and server.llama_server:
        notes.append("no GPU: Ollama's pre-flight does not run, the load is not checked against RAM")
    if not budget.known:
        notes.append("free memory unknown: only the loaded-model cap can be predicted")
    if any(resident.model_path is None for resident in loaded) and len(loaded) > 1:
        notes.append("blob paths unknown: among equal keep_alives, eviction order assumed by name")
    if spills:
        action: Action = "spill"
    elif evicted:
        action = "evict"
    elif reloads:
        action = "reload"
    else:
        action = "load"
    spill_bytes = None
    if spills is not None:
        spill_bytes = footprint.total_bytes - (gpu_bytes or 0) if budget.on_gpu and spills else 0
    prediction = Prediction(
        action=action,
        model_name=model.name,
        num_ctx=num_ctx,
        parallel=parallel,
        num_batch=launch.num_batch,
        reloads=reloads,
        evicted=tuple(evicted),
        footprint=footprint,
        ollama_estimate_bytes=launch.estimate_bytes,
        batch_surcharge_bytes=launch.surcharge_bytes,
        threshold_bytes=launch.threshold_bytes,
        free_bytes=free,
        gpu_bytes=gpu_bytes,
        spill_bytes=spill_bytes,
        fits=None if spills is None else not spills,
        reason="",
        notes=tuple(notes),
    )
    reason = _reason(prediction, own, bool(residents), budget, server)
    return dataclasses.replace(prediction, reason=reason)


def after_load(
    prediction: Prediction,
    candidate: Candidate,
    loaded: Sequence[Resident],
    budget: Budget,
    server: OllamaServer = OllamaServer(),
) -> tuple[tuple[Resident, ...], Budget]:
    """The runners and the memory once the load ``prediction`` describes has happened.

    The evicted runners and the model's old runner are gone and the new one holds its footprint;
    what ``/api/ps`` would report for it leaves out the full-attention cache of a sliding-window
    model on 0.30+, as Ollama does.
    """
    if prediction.action == "reuse":
        return tuple(loaded), budget
    gone = {_canonical(name) for name in prediction.evicted_names}
    kept = tuple(
        resident
        for resident in loaded
        if _canonical(resident.name) not in gone
        and not (prediction.reloads and same_runner(candidate, resident))
    )
    footprint = prediction.footprint
    total = footprint.total_bytes
    hidden = ps_unreported_bytes(footprint, version=server.version)
    on_gpu_bytes = prediction.gpu_bytes or 0
    size_vram = on_gpu_bytes - hidden * on_gpu_bytes // total if budget.on_gpu and total else 0
    model = candidate.model
    new = Resident(
        loaded=LoadedModel(
            name=_canonical(model.name),
            digest=model.digest or "",
            size_bytes=total - hidden,
            size_vram_bytes=size_vram,
            context_length=prediction.num_ctx,
            expires_at=None,
            spilled=budget.on_gpu and prediction.fits is False,
        ),
        facts=model,
        keep_alive_s=candidate.keep_alive_s,
        model_path=candidate.model_path,
        num_ctx_auto=candidate.num_ctx_auto,
    )
    free = prediction.free_bytes
    if free is not None:
        free -= on_gpu_bytes if budget.on_gpu else total
    return (*kept, new), dataclasses.replace(budget, free_bytes=free)


def working_set(
    candidates: Sequence[Candidate],
    loaded: Sequence[Resident] = (),
    budget: Budget = Budget(free_bytes=None, kind="unknown"),
    server: OllamaServer = OllamaServer(),
) -> WorkingSet:
    """Request ``candidates`` one after another (each finishing before the next) from ``loaded``."""
    residents: tuple[Resident, ...] = tuple(loaded)
    steps = []
    for candidate in candidates:
        step = predict(candidate, residents, budget, server)
        residents, budget = after_load(step, candidate, residents, budget, server)
        steps.append(step)
    return WorkingSet(tuple(steps), tuple(resident.name for resident in residents))


def largest_loadable_ctx(
    candidate: Candidate,
    loaded: Sequence[Resident] = (),
    budget: Budget = Budget(free_bytes=None, kind="unknown"),
    server: OllamaServer = OllamaServer(),
    *,
    beside: bool = False,
    step: int = 1024,
    max_ctx: int | None = None,
) -> int | None:
    """The largest ``num_ctx`` at which ``candidate`` loads fully, or None (also for an unknown budget).

    With ``beside`` nothing else may be unloaded for it either (only its own runner may be
    replaced). Candidates are the multiples of ``step`` up to the trained length (or ``max_ctx``)
    and that ceiling itself, widened so that at most 512 are tried. They are all tried from the
    top, not bisected: the footprint is not monotonic in ``num_ctx``, because Ollama lowers its
    automatic batch where its own estimate leaves too little headroom, which shrinks the compute
    buffer and the sliding-window cache.
    """
    if step < 1:
        raise ValueError(f"step must be at least 1, got {step}")
    if not budget.known:
        return None
    limits = [limit for limit in (max_ctx, candidate.model.context_length) if limit]
    if not limits:
        raise ValueError(f"model {candidate.model.name!r}: context_length is unknown; pass max_ctx")
    ceiling: int = min(limits)
    while ceiling // step > _MAX_SCAN:
        step *= 2
    contexts: list[int] = sorted({ceiling, *range(step, ceiling + 1, step)}, reverse=True)
    for num_ctx in contexts:
        prediction = predict(dataclasses.replace(candidate, num_ctx=num_ctx), loaded, budget, server)
        if prediction.fits and not (beside and prediction.evicted):
            return num_ctx
    return None


def side_by_side_ctx(
    candidates: Sequence[Candidate],
    contexts: Sequence[int],
    loaded: Sequence[Resident] = (),
    budget: Budget = Budget(free_bytes=None, kind="unknown"),
    server: OllamaServer = OllamaServer(),
) -> tuple[int, WorkingSet] | None:
    """The largest of ``contexts`` at which every candidate (each at most its trained length) stays
    loaded beside the others, with the working set that shows it; None when none does."""
    for num_ctx in sorted(set(contexts), reverse=True):
        sized = [dataclasses.replace(candidate, num_ctx=num_ctx) for candidate in candidates]
        result = working_set(sized, loaded, budget, server)
        if result.side_by_side:
            return num_ctx, result
    return None


# -- the rules ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Launch:
    """The figures one pass of ``load`` computes before it spawns (or asks for an eviction)."""

    num_batch: int
    estimate_bytes: int
    surcharge_bytes: int
    threshold_bytes: int | None
    ollama_free_bytes: int | None
    evicts: bool


def _launch(
    candidate: Candidate,
    num_ctx: int,
    parallel: int,
    residents: Sequence[Resident],
    free: int | None,
    budget: Budget,
    server: OllamaServer,
) -> _Launch:
    """``server/sched.go load``: the batch, Ollama's estimate and whether its pre-flight evicts."""
    model = candidate.model
    completion = _completion(model)
    ollama_free = _ollama_free(free, residents, budget)
    if not server.llama_server:
        return _legacy_launch(candidate, num_ctx, parallel, residents, free, ollama_free, budget, server)
    predicted = ollama_predicted_bytes(model, num_ctx, parallel)
    available = ollama_free if budget.on_gpu and ollama_free is not None else 0
    if candidate.num_batch is not None:
        batch = candidate.num_batch
    elif not completion:
        batch = min(2048, num_ctx)  # shouldApplyEmbeddingBatchDefault: not automatic
    else:
        per_gpu = available // max(budget.gpu_count, 1)
        batch = automatic_num_batch(
            num_ctx * parallel,
            predicted,
            available,
            version=server.version,
            cuda_without_flash_attention=budget.on_gpu and budget.cuda and server.flash_attention == "off",
            cuda_gpu_at_most_8gib=0 < per_gpu <= SMALL_GPU_BYTES,
        )
    surcharge = batch_surcharge_bytes(batch, completion=completion)
    threshold = None
    if budget.on_gpu and ollama_free is not None:
        threshold = ollama_free * EVICTION_THRESHOLD_PERCENT // 100
    evicts = ollama_free is not None and preflight_evicts(
        predicted, batch, ollama_free, len(residents), completion=completion, on_gpu=budget.on_gpu
    )
    return _Launch(batch, predicted, surcharge, threshold, ollama_free, evicts)


def _legacy_launch(
    candidate: Candidate,
    num_ctx: int,
    parallel: int,
    residents: Sequence[Resident],
    free: int | None,
    ollama_free: int | None,
    budget: Budget,
    server: OllamaServer,
) -> _Launch:
    """Before 0.30: batch 512, and the model must fit whole in free memory less the minimum.

    ``pickBestFitGPUs`` (``EstimateGPULayers`` keeps the minimum and ``OLLAMA_GPU_OVERHEAD`` free
    per GPU) on GPUs; ``maybeFindCPURunnerToUnload`` against free RAM on a CPU-only host.
    """
    batch = candidate.num_batch or DEFAULT_NUM_BATCH
    predicted = _legacy_estimate(candidate, num_ctx, parallel, batch, budget, server)
    threshold = None
    if ollama_free is not None:
        threshold = max(ollama_free - _minimum_bytes(budget, server), 0) if budget.on_gpu else free
    evicts = bool(residents) and threshold is not None and predicted > threshold
    return _Launch(batch, predicted, 0, threshold, ollama_free, evicts)


def _legacy_estimate(
    candidate: Candidate, num_ctx: int, parallel: int, batch: int, budget: Budget, server: OllamaServer
) -> int:
    """The older server's own estimate: real allocations on its engine, ``GraphSize`` otherwise."""
    model = candidate.model
    if (model.architecture or "") in OLLAMA_ENGINE_ARCHITECTURES:
        return load_footprint(
            model, num_ctx, parallel, budget, server, calibration=candidate.calibration, n_ubatch=batch
        ).total_bytes
    return legacy_predicted_bytes(model, num_ctx, parallel, server.kv_cache_type, batch)


def _placement(
    total_bytes: int, launch: _Launch, free: int | None, budget: Budget, server: OllamaServer
) -> tuple[int | None, bool | None]:
    """``(bytes on the GPU, spills?)`` once the runner starts with ``free`` bytes free.

    0.30+: llama.cpp ``--fit`` keeps the fit target free and offloads what is left to RAM. Before,
    Ollama chose the layers from its own estimate and the minimum it keeps free. On a CPU-only host
    nothing goes to a GPU, and a footprint beyond free RAM does not fit.
    """
    if free is None:
        return None, None
    if not budget.on_gpu:
        return 0, total_bytes > free
    if server.llama_server:
        room = max(free - server.fit_target_bytes, 0)
        return min(total_bytes, room), total_bytes > room
    room = launch.threshold_bytes or 0
    if launch.estimate_bytes <= room:
        return total_bytes, False
    share = room / launch.estimate_bytes if launch.estimate_bytes else 0.0
    return int(total_bytes * share), True


class Expected(NamedTuple):
    """What a request is expected to make the scheduler do: ``Prediction`` less the sizes."""

    action: Action
    evictions: tuple[str, ...]
    """The names of the runners unloaded first, in Ollama's order."""


def predicted_action(
    candidate: Candidate,
    loaded: Sequence[Resident] = (),
    budget: Budget = Budget(free_bytes=None, kind="unknown"),
    server: OllamaServer = OllamaServer(),
) -> Expected:
    """``predict``'s action and the runners it unloads, in order: what a request's record keeps.

    The usual case, a runner that serves the request as it is, is told without sizing anything
    (a quarter of a governed request's decision went to sizing a load that does not happen).
    Raises as ``predict`` does.
    """
    _, own, reuses = _serving(candidate, loaded, server)
    if own is not None and reuses:
        return Expected("reuse", ())
    prediction = predict(candidate, loaded, budget, server)
    return Expected(prediction.action, prediction.evicted_names)


def _serving(
    candidate: Candidate, loaded: Sequence[Resident], server: OllamaServer
) -> tuple[int, Resident | None, bool]:
    """The context Ollama loads ``candidate`` at (after its clamps), the runner already loaded for
    it if any, and whether that runner serves it as it is (rule 1: no ``needsReload``)."""
    model = candidate.model
    num_ctx = loaded_num_ctx(
        max(candidate.num_ctx, MIN_NUM_CTX),
        model.context_length,
        vision="vision" in model.capabilities,
        version=server.version,
    )
    own = next((resident for resident in loaded if same_runner(candidate, resident)), None)
    reuses = own is not None and not _needs_reload(own, candidate, num_ctx, server)
    return num_ctx, own, reuses


def _needs_reload(own: Resident, candidate: Candidate, num_ctx: int, server: OllamaServer) -> bool:
    """``needsReload`` on the options a plan can know: the context, its automatic flag, the batch."""
    loaded_ctx = own.loaded.context_length
    if loaded_ctx is None:
        return False  # an /api/ps before 0.9.7 hides the context: assume the runner is kept
    return _reloads(
        loaded_ctx,
        own.num_ctx_auto,
        num_ctx,
        candidate.num_ctx_auto,
        candidate.num_batch,
        server.version,
        candidate.model.context_length,
    )


@functools.lru_cache(maxsize=256)
def _reloads(
    loaded_ctx: int,
    loaded_auto: bool,
    num_ctx: int,
    num_ctx_auto: bool,
    num_batch: int | None,
    version: Version | None,
    trained_ctx: int | None,
) -> bool:
    """``needs_reload`` of the two sides ``_needs_reload`` compares. Remembered: every governed
    request's prediction asks it of the same few values, and the two ``RunnerOptions`` it builds
    were a sixth of what predicting cost."""
    loaded = RunnerOptions(num_ctx=loaded_ctx, num_ctx_auto=loaded_auto)
    wanted = RunnerOptions(
        num_ctx=num_ctx,
        num_ctx_auto=num_ctx_auto,
        num_batch=num_batch or DEFAULT_NUM_BATCH,
        num_batch_auto=num_batch is None,
    )
    return needs_reload(loaded, wanted, version, trained_ctx=trained_ctx)


def _reuse(
    candidate: Candidate, own: Resident, parallel: int, budget: Budget, server: OllamaServer
) -> Prediction:
    """Nothing loads: the runner already there serves the request as it is."""
    model = candidate.model
    num_ctx = own.loaded.context_length or candidate.num_ctx
    footprint = load_footprint(model, num_ctx, parallel, budget, server, calibration=candidate.calibration)
    predicted = (
        ollama_predicted_bytes(model, num_ctx, parallel)
        if server.llama_server
        else _legacy_estimate(candidate, num_ctx, parallel, footprint.n_ubatch, budget, server)
    )
    loaded = own.loaded
    spilled = budget.on_gpu and loaded.spilled
    where = "partly in system RAM" if spilled else "as it is"
    return Prediction(
        action="reuse",
        model_name=model.name,
        num_ctx=num_ctx,
        parallel=parallel,
        num_batch=footprint.n_ubatch,
        reloads=False,
        evicted=(),
        footprint=footprint,
        ollama_estimate_bytes=predicted,
        batch_surcharge_bytes=0,
        threshold_bytes=None,
        free_bytes=budget.free_bytes,
        gpu_bytes=loaded.size_vram_bytes if budget.on_gpu else 0,
        spill_bytes=loaded.size_bytes - loaded.size_vram_bytes if spilled else 0,
        fits=not spilled,
        reason=f"reuses {loaded.name} loaded at {num_ctx} {where}: "
        "the load-time options match, nothing reloads",
    )


def same_runner(candidate: Candidate, resident: Resident) -> bool:
    """Whether ``resident`` is the runner that would serve ``candidate``: Ollama keys runners by the
    GGUF blob, so names that share it share a runner (without paths, by name or digest)."""
    if candidate.model_path and resident.model_path:
        return candidate.model_path == resident.model_path
    if _canonical(candidate.model.name) == _canonical(resident.name):
        return True
    digests = {resident.loaded.digest, resident.facts.digest if resident.facts else None} - {None, ""}
    return bool(candidate.model.digest) and candidate.model.digest in digests


def _victim(residents: Sequence[Resident], server: OllamaServer) -> Resident:
    """``findRunnerToUnload``: sorted by (uint64 session duration, model path), idle ones first."""

    def order(resident: Resident) -> tuple[int, str]:
        keep_alive_s = server.keep_alive_s if resident.keep_alive_s is None else resident.keep_alive_s
        return _session_ns(keep_alive_s), resident.model_path or resident.name

    ordered = sorted(residents, key=order)
    idle = [resident for resident in ordered if not resident.busy and not resident.loaded.provisional]
    return idle[0] if idle else ordered[0]


def _session_ns(keep_alive_s: float) -> int:
    """``uint64(sessionDuration)``: a negative (forever) duration wraps to the largest value."""
    if keep_alive_s < 0 or math.isinf(keep_alive_s):
        return _FOREVER_NS
    return int(keep_alive_s * 1e9)


def held_bytes(resident: Resident, budget: Budget, server: OllamaServer = OllamaServer()) -> int:
    """The memory a runner really holds in ``budget``'s memory, freed when it unloads.

    ``/api/ps`` ``size_vram`` (``size`` on a CPU-only host), plus that memory's share of what
    ``/api/ps`` leaves out (``ps_unreported_bytes``). A runner still loading reports 0: its
    estimate stands in when its facts are known.
    """
    loaded = resident.loaded
    if loaded.size_bytes <= 0:
        facts = resident.facts
        if facts is None or not loaded.context_length:
            return 0
        try:
            return _resident_estimate(facts, loaded.context_length, budget, server).total_bytes
        except ValueError:
            return 0
    held = loaded.size_bytes if not budget.on_gpu else loaded.size_vram_bytes
    return held + _hidden_bytes(resident, budget, server) * held // loaded.size_bytes


def _hidden_bytes(resident: Resident, budget: Budget, server: OllamaServer) -> int:
    """What ``/api/ps`` leaves out of this runner's size (0 when its facts are unknown)."""
    facts, num_ctx = resident.facts, resident.loaded.context_length
    if facts is None or not num_ctx:
        return 0
    try:
        load = _resident_estimate(facts, num_ctx, budget, server)
    except ValueError:
        return 0
    return ps_unreported_bytes(load, version=server.version)


def _resident_estimate(
    facts: ModelFacts, num_ctx: int, budget: Budget, server: OllamaServer
) -> MemoryEstimate:
    return load_footprint(facts, num_ctx, effective_parallel(facts, server.num_parallel), budget, server)


def load_footprint(
    model: ModelFacts,
    num_ctx: int,
    parallel: int,
    budget: Budget,
    server: OllamaServer,
    *,
    calibration: Calibration | None = None,
    n_ubatch: int | None = None,
) -> MemoryEstimate:
    """``policies.memory.estimate`` for a load on this server and memory, as headroom sizes one:
    flash attention unless ``OLLAMA_FLASH_ATTENTION`` is off, and a compute buffer on each GPU of a
    discrete-GPU host."""
    return estimate(
        model,
        num_ctx,
        parallel,
        server.kv_cache_type,
        version=server.version,
        calibration=calibration,
        n_ubatch=n_ubatch,
        flash_attention=server.flash_attention != "off",
        gpu_count=budget.gpu_count if budget.kind == "gpu" else 1,
    )


def _ollama_free(free: int | None, residents: Sequence[Resident], budget: Budget) -> int | None:
    """Free memory as Ollama accounts it: ``updateFreeSpace`` takes the smaller of what the device
    reports and its total less what the loaded runners' parsed buffers say they hold."""
    if free is None or budget.total_bytes is None or not budget.on_gpu:
        return free
    reported = sum(resident.loaded.size_vram_bytes for resident in residents)
    return min(free, max(budget.total_bytes - reported, 0))


def _minimum_bytes(budget: Budget, server: OllamaServer) -> int:
    minimum = METAL_MINIMUM_MEMORY_BYTES if budget.kind == "unified" else MINIMUM_MEMORY_BYTES
    return minimum * max(budget.gpu_count, 1) + server.gpu_overhead_bytes * max(budget.gpu_count, 1)


def _completion(model: ModelFacts) -> bool:
    """Unknown capabilities count as a completion model, as ``num_parallel`` counts them."""
    return not model.capabilities or "completion" in model.capabilities


def _canonical(name: str) -> str:
    """``name:latest`` for a name without a tag, as ``/api/ps`` prints it."""
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"


# -- the reason -----------------------------------------------------------------------------------


def _reason(
    prediction: Prediction, own: Resident | None, others: bool, budget: Budget, server: OllamaServer
) -> str:
    """One readable sentence with the figures the decision turned on; ``others``: runners stay loaded."""
    parts: list[str] = []
    if prediction.reloads and own is not None:
        parts.append(f"replaces its runner loaded at {own.loaded.context_length}")
    for eviction in prediction.evicted:
        if eviction.cause == "max_loaded_models":
            why = f"{_cap(server, budget)} models are loaded, the most Ollama keeps"
        else:
            why = f"Ollama's estimate {format_bytes(eviction.preflight_bytes or 0)} > {_line(server)} " + (
                f"({format_bytes(eviction.threshold_bytes or 0)})"
            )
        parts.append(f"unloads {eviction.name} ({why})")
    if others and prediction.threshold_bytes is not None:
        surcharge = (
            f" with the batch-{prediction.num_batch} surcharge" if prediction.batch_surcharge_bytes else ""
        )
        parts.append(
            f"Ollama's estimate {format_bytes(prediction.preflight_bytes)}{surcharge} <= {_line(server)} "
            f"({format_bytes(prediction.threshold_bytes)}): loads beside the others"
        )
    elif not prediction.evicted and not others and budget.on_gpu and budget.known:
        parts.append("nothing else loaded, so no pre-flight")
    total = format_bytes(prediction.footprint.total_bytes)
    free = prediction.free_bytes
    if free is None:
        parts.append(f"needs {total}; free memory unknown")
    elif prediction.fits:
        where = "RAM" if not budget.on_gpu else "GPU memory"
        parts.append(f"needs {total} of {format_bytes(free)} free {where}: loads fully")
    elif budget.on_gpu:
        keep = format_bytes(server.fit_target_bytes) if server.llama_server else "the minimum"
        parts.append(
            f"needs {total}, {format_bytes(free)} free less {keep} kept free: "
            f"{format_bytes(prediction.spill_bytes or 0)} runs from system RAM"
        )
    else:
        parts.append(f"needs {total}, only {format_bytes(free)} free RAM: it will swap or fail to load")
    return "; ".join(parts)


def _line(server: OllamaServer) -> str:
    """The line Ollama's estimate is held to: 80% of free from 0.30, free less the minimum before."""
    return "80% of free" if server.llama_server else "free less the minimum"


def _cap(server: OllamaServer, budget: Budget) -> int:
    """``OLLAMA_MAX_LOADED_MODELS``, or three per GPU (three on CPU; one GPU assumed when unknown)."""
    return max_loaded_models(server.max_loaded_models, budget.gpu_count if budget.kind != "unknown" else 1)
