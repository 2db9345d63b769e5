"""The fake's scheduler: which runner serves a request, when a model (re)loads, spills or is evicted.

Two behaviours, chosen by the fake's version:

- before 0.33 (the fake as it always was): one runner per model name, reloaded on any other
  ``num_ctx``; a load evicts idle runners (least recently used first) until its footprint fits
  in VRAM, and spills what still does not fit.
- 0.33 (Ollama's server/sched.go at v0.33.0-rc2): runners are keyed by the GGUF blob, so names
  sharing one share a runner; needsReload compares the load-time options after normalising
  (clamped num_ctx, automatic vs automatic equal, num_gpu < 0 ignored, context shift); at most
  ``max_loaded_models`` runners; with other models loaded, Ollama's own estimate plus the batch
  surcharge must stay within 80% of free VRAM, else a runner is evicted (shortest keep_alive
  first, then by blob path: sched.go findRunnerToUnload, idle ones before busy ones); llama.cpp
  then places what fits (keeping ``fit_target_bytes`` free) and spills the rest. A failed load
  (out of memory) reduces an automatic context once, else evicts everything and retries once.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from dataclasses import dataclass, replace

from tests.fakeollama import memory
from tests.fakeollama.memory import Footprint
from tests.fakeollama.models import FakeModel
from tests.fakeollama.records import (
    Eviction,
    LoadedState,
    LoadEvent,
    RunnerOptions,
    RunnerRequest,
)
from tests.fakeollama.simtime import LoadTiming, SimTime
from tests.fakeollama.wire import DEFAULT_KEEP_ALIVE_NS, FOREVER_NS, ApiError, GiB, parse_go_duration

_TIMING: ContextVar[LoadTiming | None] = ContextVar("fake_load_timing", default=None)
"""The timing of the acquire running in this task, which its waits add to."""


def _waited(started_ns: int) -> None:
    """Count the wall time since ``started_ns`` as waiting on other requests."""
    timing = _TIMING.get()
    if timing is not None:
        timing.waited_wall_ns += time.monotonic_ns() - started_ns


SINGLE_PARALLEL_ARCHS = frozenset(
    {"mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2", "lfm2moe"}
)
"""model.SingleParallelArchitectures (plus every ``nemotron_h*``): always one parallel slot."""
DEFAULT_MODELS_PER_GPU = 3
OOM_MESSAGE = "llama-server reported out-of-memory during startup: cudaMalloc failed: out of memory"


@dataclass(frozen=True)
class LoadPlan:
    """How 0.33 would launch a runner: ``-c num_ctx*parallel -np parallel -b/-ub num_batch``."""

    num_ctx: int
    parallel: int
    num_batch: int
    footprint: Footprint
    predicted: int
    """Ollama's estimate (llm.PredictServerVRAM) without the batch surcharge."""
    surcharge: int

    @property
    def predicted_load(self) -> int:
        return self.predicted + self.surcharge


class SchedulerMixin:
    """Runner table, loads and evictions; FakeOllama sets the attributes annotated here."""

    modern: bool
    vram_bytes: int | None
    num_parallel: int
    kv_cache_type: str
    n_ubatch: int
    load_delay_s: float
    load_bytes_per_s: float | None
    spill_slowdown: float
    sim: SimTime
    fit_target_bytes: int
    ram_bytes: int | None
    max_loaded_models: int
    flash_attention: bool
    default_keep_alive_ns: int
    fail_next_loads: int
    loads: list[tuple[str, int]]
    load_events: list[LoadEvent]
    evictions: list[Eviction]
    _loaded: dict[str, LoadedState]
    _sched: asyncio.Lock
    _changed: asyncio.Event

    # ------------------------------------------------------------ public inspection
    def loaded(self) -> dict[str, LoadedState]:
        """Currently loaded runners keyed by full model name (expired ones are dropped first)."""
        self._purge()
        return {s.name: s for s in self._loaded.values()}

    def free_vram_bytes(self) -> int | None:
        """VRAM not used by loaded runners; None on a CPU-only host."""
        if self.vram_bytes is None:
            return None
        self._purge()
        return self.vram_bytes - sum(s.footprint_vram_bytes for s in self._loaded.values())

    def free_ram_bytes(self) -> int | None:
        """System RAM not used by the spilled part of loaded runners; None when unlimited."""
        if self.ram_bytes is None:
            return None
        self._purge()
        return self.ram_bytes - sum(s.footprint_bytes - s.footprint_vram_bytes for s in self._loaded.values())

    def parallel_for(self, model: FakeModel) -> int:
        """Parallel slots P: 1 for embedding models (and, on 0.33, single-parallel architectures)."""
        if not self.modern:
            return 1 if "embedding" in model.capabilities else max(self.num_parallel, 1)
        if "completion" not in model.capabilities:
            return 1
        if model.arch in SINGLE_PARALLEL_ARCHS or model.arch.startswith("nemotron_h"):
            return 1
        return max(self.num_parallel, 1)

    def clamp_ctx(self, model: FakeModel, num_ctx: int) -> int:
        return max(4, min(num_ctx, model.context_length))

    def kv_bytes(self, model: FakeModel, num_ctx: int, *, n_ubatch: int | None = None) -> int:
        """llama.cpp KV cache (facts §3a): per-layer cells x n_head_kv x (k+v) x bytes/element.

        ``n_ubatch`` sizes the sliding-window cells: 512 before 0.33, the automatic batch on 0.33.
        """
        num_ctx = self.clamp_ctx(model, num_ctx)
        p = self.parallel_for(model)
        ub = (
            n_ubatch
            if n_ubatch is not None
            else (self.plan(model, num_ctx).num_batch if self.modern else self.n_ubatch)
        )
        full, swa = memory.kv_by_kind(model, num_ctx, parallel=p, n_ubatch=ub, cache_type=self.kv_cache_type)
        return full + swa

    def compute_bytes(self, model: FakeModel, num_ctx: int) -> int:
        """Compute buffer: before 0.33 an offset plus a slope in num_ctx, on 0.33 memory.compute_bytes."""
        if self.modern:
            return self.plan(model, num_ctx).footprint.compute
        return model.compute_base_bytes + model.compute_bytes_per_ctx * self.clamp_ctx(model, num_ctx)

    def size_for(self, model: FakeModel, num_ctx: int) -> int:
        """The "true" footprint of a load on an empty host: weights + KV cache + compute (+ output)."""
        if self.modern:
            return self.plan(model, num_ctx).footprint.total
        return model.weights_bytes + self.kv_bytes(model, num_ctx) + self.compute_bytes(model, num_ctx)

    def estimate_bytes(self, model: FakeModel, num_ctx: int) -> int:
        """Ollama 0.33's own estimate for ``num_ctx`` (without the batch surcharge)."""
        ctx = self.clamp_ctx(model, num_ctx)
        return memory.ollama_estimate(model, ctx, self.parallel_for(model))

    def plan(
        self, model: FakeModel, num_ctx: int, *, num_batch: int | None = None, available: int | None = None
    ) -> LoadPlan:
        """How 0.33 launches ``model`` at ``num_ctx`` with ``available`` VRAM (default: all of it).

        ``num_batch`` None is Ollama's automatic batch: by context tier, stepped down while the
        estimate leaves too little headroom; embedding models use min(2048, num_ctx).
        """
        ctx = self.clamp_ctx(model, num_ctx)
        p = self.parallel_for(model)
        predicted = memory.ollama_estimate(model, ctx, p)
        completion = "completion" in model.capabilities
        if not completion:
            batch = min(num_batch or memory.EMBEDDING_BATCH, ctx * p)
        elif num_batch is not None:
            batch = num_batch
        else:
            avail = (self.vram_bytes or 0) if available is None else available
            batch = memory.automatic_batch(
                ctx * p,
                predicted,
                avail if self.vram_bytes is not None else 0,
                cuda_without_fa=self.vram_bytes is not None and not self.flash_attention,
                small_gpu=self.vram_bytes is not None and self.vram_bytes <= 8 * GiB,
            )
        fp = memory.footprint(model, ctx, parallel=p, n_ubatch=batch, cache_type=self.kv_cache_type)
        surcharge = memory.batch_surcharge(batch) if completion else 0
        return LoadPlan(ctx, p, batch, fp, predicted, surcharge)

    def load_seconds(self, model: FakeModel, *, spilled: bool) -> float:
        """Simulated seconds a load takes: the fixed delay plus reading the weights; slower spilled."""
        seconds = self.load_delay_s
        if self.load_bytes_per_s is not None:
            seconds += model.weights_bytes / self.load_bytes_per_s
        return seconds * (self.spill_slowdown if spilled else 1.0)

    # ------------------------------------------------------------ bookkeeping
    def _key(self, model: FakeModel) -> str:
        return model.blob if self.modern else model.full_name

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self) -> None:
        started = time.monotonic_ns()
        await self._changed.wait()
        _waited(started)

    def _purge(self) -> None:
        now = time.time_ns()
        for key, s in list(self._loaded.items()):
            if s.refcount == 0 and not s.loading and s.expires_at_ns <= now:
                del self._loaded[key]

    def _unload(self, state: LoadedState) -> None:
        if self._loaded.get(state.key) is state:
            del self._loaded[state.key]
            self._notify()

    def _unload_model(self, model: FakeModel) -> None:
        """keep_alive 0 on an empty prompt: unload the model's runner now, or when it goes idle."""
        state = self._loaded.get(self._key(model))
        if state is not None:
            state.keep_alive_ns = 0
            if state.refcount == 0:
                self._unload(state)

    def _release(self, state: LoadedState) -> None:
        state.refcount -= 1
        state.last_used_ns = time.monotonic_ns()
        if state.refcount == 0:
            if state.keep_alive_ns == 0:
                self._unload(state)
            else:
                state.expires_at_ns = time.time_ns() + state.keep_alive_ns
        self._notify()

    def _use(self, state: LoadedState, keep_alive: int | None) -> LoadedState:
        state.refcount += 1
        if keep_alive is not None:
            state.keep_alive_ns = keep_alive  # provided keep_alive persists on the runner
        return state

    async def _sleep_load(self, model: FakeModel, state: LoadedState, timing: LoadTiming | None) -> None:
        load_s = self.load_seconds(model, spilled=state.spilled)
        t_sleep = time.monotonic_ns()
        try:
            if load_s > 0:
                await asyncio.sleep(load_s / self.sim.time_scale)
            if timing is not None:
                timing.sleep_wall_ns += time.monotonic_ns() - t_sleep
                timing.simulated_s += load_s
        except asyncio.CancelledError:
            state.loading = False
            self._release(state)
            raise
        finally:
            state.loading = False

    async def _acquire(self, req: RunnerRequest, timing: LoadTiming | None = None) -> LoadedState:
        """Get a runner for ``req``, (re)loading like Ollama's scheduler; the caller must release.

        ``timing`` receives the load this call performed itself, for reporting simulated time.
        """
        token = _TIMING.set(timing)
        try:
            if self.modern:
                return await self._acquire_modern(req, timing)
            return await self._acquire_legacy(req.model, req.options.num_ctx, req.keep_alive_ns, timing)
        finally:
            _TIMING.reset(token)

    # ------------------------------------------------------------ before 0.33
    async def _make_room(self, key: str, size: int) -> bool:
        """Evict idle other runners, LRU first, until ``size`` fits; False if it had to wait."""
        while self.vram_bytes is not None:
            free = self.vram_bytes - sum(s.size_vram for k, s in self._loaded.items() if k != key)
            others = [s for k, s in self._loaded.items() if k != key]
            if size <= free or not others:
                return True
            idle = [s for s in others if s.refcount == 0]
            if not idle:
                await self._wait_change()
                return False
            self._unload(min(idle, key=lambda s: s.last_used_ns))
        return True

    async def _acquire_legacy(
        self, model: FakeModel, num_ctx: int, keep_alive: int | None, timing: LoadTiming | None
    ) -> LoadedState:
        key = self._key(model)
        queued = time.monotonic_ns()
        async with self._sched:
            _waited(queued)
            while True:
                self._purge()
                state = self._loaded.get(key)
                if state is not None and state.num_ctx == num_ctx:
                    state.refcount += 1
                    break
                if state is not None and state.refcount > 0:
                    await self._wait_change()  # a reload waits for in-flight requests
                    continue
                if state is not None:
                    self._unload(state)
                size = self.size_for(model, num_ctx)
                if not await self._make_room(key, size):
                    continue
                free = self.free_vram_bytes()
                size_vram = 0 if free is None else min(size, max(free, 0))
                spilled = free is not None and size_vram < size
                ka = self.default_keep_alive_ns if keep_alive is None else keep_alive
                state = LoadedState(
                    model,
                    model.full_name,
                    num_ctx,
                    size,
                    size_vram,
                    spilled,
                    ka,
                    time.time_ns() + ka,
                    asyncio.Semaphore(self.parallel_for(model)),
                    refcount=1,
                    last_used_ns=time.monotonic_ns(),
                    key=key,
                    parallel=self.parallel_for(model),
                    num_batch=self.n_ubatch,
                    footprint_bytes=size,
                    footprint_vram_bytes=size_vram,
                    loading=True,
                )
                self._loaded[key] = state
                self.loads.append((model.full_name, num_ctx))
                self.load_events.append(
                    LoadEvent(
                        model.full_name,
                        num_ctx,
                        state.parallel,
                        self.n_ubatch,
                        size,
                        size_vram,
                        size,
                        spilled,
                        (),
                        "load",
                    )
                )
                await self._sleep_load(model, state, timing)
                break
        if keep_alive is not None:
            state.keep_alive_ns = keep_alive  # provided keep_alive persists on the runner
        return state

    # ------------------------------------------------------------ 0.33
    def reload_changes(self, state: LoadedState, req: RunnerRequest) -> tuple[str, ...]:
        """sched.go needsReload: the runner options that differ after normalisation (empty: reuse)."""
        old, new = state.options, req.options
        if old is None:
            return ("options",)
        changed = []
        if not (state.num_ctx_auto and req.num_ctx_auto) and new.num_ctx != old.num_ctx:
            changed.append("num_ctx")
        if not (state.num_batch_auto and req.num_batch_auto) and new.num_batch != old.num_batch:
            changed.append("num_batch")
        if new.num_gpu >= 0 and new.num_gpu != old.num_gpu:
            changed.append("num_gpu")
        for name in ("main_gpu", "use_mmap", "num_thread", "draft_num_predict"):
            if getattr(new, name) != getattr(old, name):
                changed.append(name)
        if req.context_shift != state.context_shift:
            changed.append("context_shift")
        return tuple(changed)

    def _runner_to_unload(self) -> LoadedState | None:
        """sched.go findRunnerToUnload: shortest keep_alive first, then blob path; idle ones first."""
        runners = sorted(self._loaded.values(), key=lambda s: (s.keep_alive_ns % 2**64, f"sha256-{s.key}"))
        idle = [s for s in runners if s.refcount == 0 and not s.loading]
        return idle[0] if idle else (runners[0] if runners else None)

    async def _drain_and_unload(self, state: LoadedState) -> None:
        """Wait for the runner's requests to finish (refcount 0), then unload it."""
        while self._loaded.get(state.key) is state:
            if state.refcount == 0 and not state.loading:
                self._unload(state)
                return
            await self._wait_change()

    async def _evict(
        self,
        victim: LoadedState,
        for_model: str,
        reason: str,
        evicted: list[str],
        *,
        predicted: int = 0,
        available: int = 0,
    ) -> None:
        self.evictions.append(Eviction(victim.name, for_model, reason, predicted, available))
        evicted.append(victim.name)
        await self._drain_and_unload(victim)

    async def _acquire_modern(self, req: RunnerRequest, timing: LoadTiming | None) -> LoadedState:
        model, name, key = req.model, req.model.full_name, self._key(req.model)
        self._purge()
        state = self._loaded.get(key)
        if state is not None and not state.loading and not self.reload_changes(state, req):
            return self._use(state, req.keep_alive_ns)  # getRunner's fast path: no queueing
        queued = time.monotonic_ns()
        async with self._sched:
            _waited(queued)
            oom_retried, reason = False, "load"
            changed: tuple[str, ...] = ()
            evicted: list[str] = []
            while True:
                self._purge()
                state = self._loaded.get(key)
                if state is not None:
                    diff = self.reload_changes(state, req)
                    if not diff:
                        return self._use(state, req.keep_alive_ns)
                    if reason == "load":
                        reason, changed = "reload", diff
                    await self._drain_and_unload(state)
                    continue
                max_runners = self.max_loaded_models or DEFAULT_MODELS_PER_GPU
                if len(self._loaded) >= max_runners:
                    victim = self._runner_to_unload()
                    if victim is not None:
                        await self._evict(victim, name, "max_loaded_models", evicted)
                        continue
                opts = req.options
                free = self.free_vram_bytes()
                plan = self.plan(
                    model,
                    opts.num_ctx,
                    available=free,
                    num_batch=None if req.num_batch_auto else opts.num_batch,
                )
                partial = 0 < opts.num_gpu < int(model.info("block_count", 0)) + 1
                if (
                    self._loaded
                    and free is not None
                    and opts.num_gpu != 0
                    and not partial
                    and plan.predicted_load > max(free, 0) * 80 // 100
                ):
                    victim = self._runner_to_unload()
                    if victim is not None:
                        await self._evict(
                            victim,
                            name,
                            "fit",
                            evicted,
                            predicted=plan.predicted_load,
                            available=max(free, 0),
                        )
                        continue
                vram, oom = self._placement(model, plan, opts)
                if oom or self.fail_next_loads > 0:
                    if not oom:
                        self.fail_next_loads -= 1
                    lower = memory.next_lower_auto_num_ctx(plan.num_ctx) if req.num_ctx_auto else None
                    if not oom_retried and lower is not None and lower < opts.num_ctx:
                        oom_retried, reason = True, "oom_retry"
                        req = replace(req, options=replace(opts, num_ctx=lower))
                    elif not oom_retried and self._loaded:
                        oom_retried, reason = True, "oom_retry"
                    else:
                        raise ApiError(500, OOM_MESSAGE)
                    for victim in list(self._loaded.values()):
                        await self._evict(victim, name, "oom", evicted)
                    continue
                state = self._start_runner(req, plan, vram, reason, changed, tuple(evicted))
                await self._sleep_load(model, state, timing)
                return state

    def _placement(self, model: FakeModel, plan: LoadPlan, opts: RunnerOptions) -> tuple[int, bool]:
        """(bytes on the GPU, out of memory?): llama.cpp --fit keeps ``fit_target_bytes`` free and
        spills the rest, unless num_gpu set -ngl (then layers that do not fit are an OOM)."""
        total = plan.footprint.total
        free = self.free_vram_bytes()
        oom = False
        if free is None or opts.num_gpu == 0:
            vram = 0
        else:
            n_layers = int(model.info("block_count", 0)) + 1
            if opts.num_gpu > 0:
                vram = total * min(opts.num_gpu, n_layers) // n_layers
                oom = vram > free
            else:
                vram = min(total, max(free - self.fit_target_bytes, 0))
        free_ram = self.free_ram_bytes()
        if free_ram is not None and total - vram > free_ram:
            oom = True
        return vram, oom

    def _start_runner(
        self,
        req: RunnerRequest,
        plan: LoadPlan,
        vram: int,
        reason: str,
        changed: tuple[str, ...],
        evicted: tuple[str, ...],
    ) -> LoadedState:
        model, fp = req.model, plan.footprint
        spilled = self.vram_bytes is not None and vram < fp.total
        size = fp.reported
        size_vram = vram - (fp.hidden_kv * vram // fp.total if fp.total else 0)
        ka = self.default_keep_alive_ns if req.keep_alive_ns is None else req.keep_alive_ns
        opts = replace(req.options, num_ctx=plan.num_ctx, num_batch=plan.num_batch)
        state = LoadedState(
            model,
            model.full_name,
            plan.num_ctx,
            size,
            size_vram,
            spilled,
            ka,
            time.time_ns() + ka,
            asyncio.Semaphore(plan.parallel),
            refcount=1,
            last_used_ns=time.monotonic_ns(),
            key=self._key(model),
            parallel=plan.parallel,
            num_batch=plan.num_batch,
            options=opts,
            num_ctx_auto=req.num_ctx_auto,
            num_batch_auto=req.num_batch_auto,
            context_shift=req.context_shift,
            footprint_bytes=fp.total,
            footprint_vram_bytes=vram,
            loading=True,
        )
        self._loaded[state.key] = state
        self.loads.append((model.full_name, plan.num_ctx))
        self.load_events.append(
            LoadEvent(
                model.full_name,
                plan.num_ctx,
                plan.parallel,
                plan.num_batch,
                size,
                size_vram,
                fp.total,
                spilled,
                evicted,
                reason,
                changed,
            )
        )
        return state


def default_keep_alive(env: str | float | None) -> int:
    """OLLAMA_KEEP_ALIVE: a Go duration or bare seconds; negative means forever; unset 5m."""
    if env is None:
        return DEFAULT_KEEP_ALIVE_NS
    if isinstance(env, int | float):
        ns = int(env * 1e9)
    else:
        try:
            ns = int(float(env) * 1e9)
        except ValueError:
            ns = parse_go_duration(env)
    return FOREVER_NS if ns < 0 else ns
