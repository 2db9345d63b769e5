"""Facts about Ollama gathered off the request path: model facts, loaded models, version.

``/api/show`` is fetched once per model digest (single-flight) and cached; ``/api/tags`` maps
names to digests and is re-read when a pull/create/copy/delete passes through. ``/api/ps`` is
polled every few seconds and right after each load, and every fresh load calibrates the memory
model. A request never waits on any of this beyond a short, bounded wait for a model's first
facts; whatever is missing reaches policies as ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from policies.context import GpuSnapshot, LoadedModel
from policies.memory import assumed_parts, effective_parallel, estimate, ps_unreported_bytes
from policies.model import ModelFacts, parse_version, uses_llama_server
from policies.ollama import loaded_num_ctx
from proxy.config.settings import OllamaSettings
from proxy.facts.calibration import CalibrationBook, calibration_key
from proxy.names import canonical_model
from proxy.upstream.client import OWN_HEADERS, Upstream

log = structlog.get_logger("ollama_governor.facts")


def parse_loaded(models: object, *, gpu_host: bool) -> tuple[LoadedModel, ...]:
    """``/api/ps`` models as LoadedModel values.

    ``size_vram < size`` is a spill only on a host with a GPU: on a CPU-only host Ollama
    reports ``size_vram`` 0 for every model, which is CPU inference, not a spill.
    """
    loaded = []
    for entry in models if isinstance(models, list) else ():
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        size = _int(entry.get("size"))
        size_vram = _int(entry.get("size_vram"))
        loaded.append(
            LoadedModel(
                name=entry["name"],
                digest=str(entry.get("digest") or ""),
                size_bytes=size,
                size_vram_bytes=size_vram,
                context_length=_int(entry.get("context_length")) or None,
                expires_at=entry.get("expires_at") if isinstance(entry.get("expires_at"), str) else None,
                spilled=gpu_host and size_vram < size,
            )
        )
    return tuple(loaded)


_FROM_RE = re.compile(r"^FROM\s+(\S+)\s*$", re.MULTILINE)


def blob_path(show: Mapping[str, Any]) -> str | None:
    """The GGUF a model runs, from ``/api/show``'s Modelfile (``FROM /.../blobs/sha256-...``).

    Ollama keys its runners by this path, so names sharing it share a runner, and its eviction
    order breaks ties by it (``server/sched.go findRunnerToUnload``).
    """
    modelfile = show.get("modelfile")
    found = _FROM_RE.search(modelfile) if isinstance(modelfile, str) else None
    return found.group(1) if found else None


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


class Facts:
    """Everything the governor knows about Ollama, refreshed in the background.

    It is the one reader of ``/api/ps``: the memory source for a remote GPU
    (``OllamaPsSource``) reads its latest answer through ``latest_ps`` instead of polling too.
    """

    def __init__(
        self,
        upstream: Upstream,
        settings: OllamaSettings,
        *,
        gpu: Callable[[], GpuSnapshot | None] = lambda: None,
        state_dir: Path | None = None,
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self.gpu = gpu
        self.calibrations = CalibrationBook(state_dir / "calibration.json" if state_dir else None)
        self.loaded: tuple[LoadedModel, ...] = ()
        self._ps_answer: object = None
        self._ps_error: Exception | None = RuntimeError("/api/ps not read yet")
        self._ps_tried = False
        self.ps_read_ts: float | None = None
        """When ``/api/ps`` last answered (unix seconds), None before its first answer."""
        self.detected_version: tuple[int, int, int] | None = None
        self._by_digest: dict[str, ModelFacts] = {}
        self._blob_paths: dict[str, str] = {}
        self._facts_learnt = 0
        """Counts the facts fetched into ``_by_digest`` (part of ``revision``)."""
        self._tags: dict[str, Mapping[str, Any]] | None = None
        self._tags_task: asyncio.Task[None] | None = None
        self._show_tasks: dict[str, asyncio.Task[ModelFacts | None]] = {}
        self._show_failed: dict[str, float] = {}
        self._ps_queued: asyncio.Task[None] | None = None
        self._ps_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._logged: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin polling ``/api/ps`` (and read the version) in the background."""
        self._poller = asyncio.create_task(self._poll(), name="ollama-governor facts poller")

    async def stop(self) -> None:
        """Stop background work and persist calibrations."""
        tasks = [t for t in (self._poller, self._ps_queued, self._tags_task, *self._show_tasks.values()) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self.calibrations.save)

    async def _poll(self) -> None:
        while True:
            await self.refresh_loaded()
            await asyncio.sleep(self.settings.ps_interval_s)

    # -- version ---------------------------------------------------------------------------

    @property
    def version(self) -> tuple[int, int, int] | None:
        """The configured override, else what ``/api/version`` said."""
        return self.settings.version or self.detected_version

    async def _read_version(self) -> None:
        try:
            answer = await self.upstream.get_json("/api/version", timeout_s=5.0)
            self.detected_version = parse_version(str(answer.get("version")))
        except Exception as exc:
            self._once("version_unknown", error=f"{type(exc).__name__}: {exc}")

    # -- loaded models ---------------------------------------------------------------------

    @property
    def ps_error(self) -> Exception | None:
        """Why the last ``/api/ps`` read failed, or None when it worked."""
        return self._ps_error

    def ps_hidden_bytes(self, entry: Mapping[str, Any]) -> int:
        """What one ``/api/ps`` entry holds but leaves out of ``size``: a sliding-window model's
        full-attention cache (0.30+), estimated from the model's facts; 0 when they are unknown."""
        digest, num_ctx = entry.get("digest"), entry.get("context_length")
        facts = self._by_digest.get(digest) if isinstance(digest, str) else None
        if facts is None or not isinstance(num_ctx, int) or num_ctx < 1:
            return 0
        parallel = effective_parallel(facts, self.settings.num_parallel)
        try:
            load = estimate(facts, num_ctx, parallel, self.settings.kv_cache_type, version=self.version)
        except ValueError:
            return 0
        return ps_unreported_bytes(load, version=self.version)

    async def latest_ps(self) -> object:
        """The last ``/api/ps`` answer the poller read; raises why there is none.

        Before the first read this waits for it (or makes it, when nothing polls): the memory
        sampler's first sample at start-up must not report Ollama unavailable for want of one.
        """
        if not self._ps_tried:
            async with self._ps_lock:
                if not self._ps_tried:
                    await self._read_loaded()
        if self._ps_error is not None:
            raise self._ps_error
        return self._ps_answer

    @property
    def revision(self) -> tuple[object, ...]:
        """Different (by ``==``) whenever ``loaded``, ``cached_facts`` or ``model_path`` may answer
        differently: a key for what is derived from them."""
        return (self.loaded, self._tags, self._facts_learnt)

    def loaded_model(self, name: str) -> LoadedModel | None:
        """This model as ``/api/ps`` last showed it, or None."""
        wanted = canonical_model(name)
        for model in self.loaded:
            if canonical_model(model.name) == wanted:
                return model
        return None

    def expect_loaded(self, name: str, num_ctx: int) -> bool:
        """Note that a request just sent will have Ollama hold ``name`` at ``num_ctx``; True when
        that means a (re)load, as far as the last ``/api/ps`` read tells.

        Until ``/api/ps`` confirms it, the entry is provisional, so concurrent requests see the
        context being loaded rather than a stale one (and do not trigger a second reload).
        """
        current = self.loaded_model(name)
        facts = self.cached_facts(name)
        if facts is not None:  # Ollama clamps to the trained length, with its floors
            vision = "vision" in facts.capabilities
            num_ctx = loaded_num_ctx(num_ctx, facts.context_length, vision=vision, version=self.version)
        if current is not None and current.context_length == num_ctx:
            return False
        provisional = LoadedModel(
            name=current.name if current else canonical_model(name),
            digest=current.digest if current else (facts.digest or "" if facts else ""),
            size_bytes=0,
            size_vram_bytes=0,
            context_length=num_ctx,
            expires_at=None,
            provisional=True,
        )
        others = tuple(m for m in self.loaded if m is not current)
        self.loaded = (*others, provisional)
        return True

    def refresh_loaded_soon(self) -> asyncio.Task[None]:
        """Schedule an ``/api/ps`` read that starts after this call (a load just finished).

        Callers that arrive while such a read is still waiting to start share it, so a burst
        of finished requests costs one read, and none of them gets a read from before it.
        """
        if self._ps_queued is None or self._ps_queued.done():
            self._ps_queued = asyncio.create_task(self._queued_refresh())
        return self._ps_queued

    async def _queued_refresh(self) -> None:
        async with self._ps_lock:
            self._ps_queued = None
            await self._read_loaded()

    async def refresh_loaded(self) -> None:
        """Read ``/api/ps`` once and calibrate from any load not seen before."""
        async with self._ps_lock:
            await self._read_loaded()

    async def _read_loaded(self) -> None:
        if self.detected_version is None:
            await self._read_version()
        try:
            answer = await self.upstream.get_json("/api/ps", timeout_s=5.0)
        except Exception as exc:
            self._ps_tried = True
            self._ps_error = exc
            self._once("ps_unavailable", error=f"{type(exc).__name__}: {exc}")
            return
        self._ps_answer, self._ps_error, self._ps_tried = answer, None, True
        self.ps_read_ts = time.time()
        self._logged.discard("ps_unavailable")
        models = answer.get("models") if isinstance(answer, dict) else None
        snapshot = self.gpu()
        # On a "system" host the sample is RAM and size_vram 0 is CPU inference, not a spill.
        gpu_host = bool(snapshot and snapshot.known and snapshot.kind != "system") or any(
            isinstance(m, dict) and _int(m.get("size_vram")) > 0
            for m in (models if isinstance(models, list) else ())
        )
        self.loaded = parse_loaded(models, gpu_host=gpu_host)
        if any(self._calibrate(model) for model in self.loaded):
            await asyncio.to_thread(self.calibrations.save)

    def _calibrate(self, loaded: LoadedModel) -> bool:
        facts = self._by_digest.get(loaded.digest)
        if facts is None or not loaded.context_length or loaded.size_bytes <= 0:
            return False
        parallel = effective_parallel(facts, self.settings.num_parallel)
        snapshot = self.gpu()
        try:  # the estimate headroom makes on this host, so the correction applies to it
            load = estimate(
                facts,
                loaded.context_length,
                parallel,
                self.settings.kv_cache_type,
                version=self.version,
                flash_attention=self.settings.flash_attention != "off",
                gpu_count=snapshot.gpu_count if snapshot is not None else 1,
            )
        except ValueError:
            return False
        # /api/ps leaves a sliding-window model's full-attention cache out of ``size``: calibration
        # learns the real allocation (docs/ollama-rules.md §7).
        unreported_bytes = ps_unreported_bytes(load, version=self.version)
        return self.calibrations.observe(
            self.calibration_key(facts),
            loaded.context_length,
            load.raw_bytes,
            loaded.size_bytes,
            unreported_bytes,
        )

    def calibration_key(self, facts: ModelFacts) -> str:
        """The calibration key for a model under the current settings, on this host's memory."""
        engine = "llama-server" if uses_llama_server(self.version) else "legacy"
        parallel = effective_parallel(facts, self.settings.num_parallel)
        snapshot = self.gpu()
        return calibration_key(
            facts.digest or facts.name,
            parallel,
            self.settings.kv_cache_type,
            engine,
            snapshot.backend if snapshot is not None else "unknown",
            flash_attention=self.settings.flash_attention != "off",
            gpu_count=snapshot.gpu_count if snapshot is not None else 1,
        )

    def assumed_parts(self) -> tuple[str, ...]:
        """What the memory figures assume, not measure, on this host (``memory.assumed_parts``)."""
        snapshot = self.gpu()
        return assumed_parts(
            snapshot.backend if snapshot is not None else "unknown",
            flash_attention=self.settings.flash_attention != "off",
            gpu_count=snapshot.gpu_count if snapshot is not None else 1,
            kv_cache_type=self.settings.kv_cache_type,
        )

    # -- model facts -----------------------------------------------------------------------

    def invalidate(self) -> None:
        """Forget name-to-digest mappings (a pull, create, copy or delete went through)."""
        self._tags = None
        self._show_failed.clear()

    async def model_facts(self, name: str, wait_s: float | None = None) -> ModelFacts | None:
        """Facts for ``name``, waiting at most ``wait_s`` for a first fetch (it goes on after)."""
        key = canonical_model(name)
        cached = self.cached_facts(key)
        if cached is not None:
            return cached
        if self._show_failed.get(key, 0.0) > time.monotonic():
            return None
        task = self._show_tasks.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch_facts(key))
            self._show_tasks[key] = task
            task.add_done_callback(lambda _: self._show_tasks.pop(key, None))
        try:
            return await asyncio.wait_for(
                asyncio.shield(task), self.settings.facts_wait_s if wait_s is None else wait_s
            )
        except TimeoutError:
            self._once(f"facts_slow:{key}", event="facts_slow", model=name)
            return None

    def cached_facts(self, name: str) -> ModelFacts | None:
        """Facts already known for ``name``, without fetching anything."""
        entry = (self._tags or {}).get(canonical_model(name))
        digest = entry.get("digest") if entry else None
        return self._by_digest.get(digest) if isinstance(digest, str) else None

    def model_path(self, name: str) -> str | None:
        """The blob ``name`` runs (``blob_path``), once its facts were fetched; else None."""
        entry = (self._tags or {}).get(canonical_model(name))
        digest = entry.get("digest") if entry else None
        return self._blob_paths.get(digest) if isinstance(digest, str) else None

    async def _fetch_facts(self, name: str) -> ModelFacts | None:
        try:
            tags = await self._current_tags(refresh=name not in (self._tags or {}))
            entry = tags.get(name)
            if entry is None:
                return None  # Ollama will answer "model not found" itself
            digest = str(entry.get("digest") or "")
            if digest in self._by_digest:
                return self._by_digest[digest]
            response = await self.upstream.session.post(
                self.upstream.url("/api/show"), json={"model": name, "verbose": True}, headers=OWN_HEADERS
            )
            async with response:
                if response.status != 200:
                    raise RuntimeError(f"/api/show answered {response.status}")
                raw = await response.read()
            show = await asyncio.to_thread(json.loads, raw)
            facts = await asyncio.to_thread(ModelFacts.from_show, name, show, entry)
            self._by_digest[digest or name] = facts
            self._facts_learnt += 1
            path = blob_path(show) if isinstance(show, dict) else None
            if path is not None:
                self._blob_paths[digest or name] = path
            self._logged.discard(f"facts_failed:{name}")
            return facts
        except Exception as exc:
            self._show_failed[name] = time.monotonic() + 30.0
            error = f"{type(exc).__name__}: {exc}"
            self._once(f"facts_failed:{name}", event="facts_unavailable", model=name, error=error)
            return None

    async def _current_tags(self, *, refresh: bool) -> dict[str, Mapping[str, Any]]:
        if self._tags is None or refresh:
            if self._tags_task is None or self._tags_task.done():
                self._tags_task = asyncio.create_task(self._read_tags())
            await asyncio.shield(self._tags_task)
        return self._tags or {}

    async def _read_tags(self) -> None:
        answer = await self.upstream.get_json("/api/tags", timeout_s=10.0)
        models = answer.get("models") if isinstance(answer, dict) else None
        self._tags = {
            canonical_model(m["name"]): m
            for m in (models if isinstance(models, list) else ())
            if isinstance(m, dict) and isinstance(m.get("name"), str)
        }

    # -- logging ---------------------------------------------------------------------------

    def _once(self, key: str, event: str | None = None, **fields: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(event or key, **fields)
