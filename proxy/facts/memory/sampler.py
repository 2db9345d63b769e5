"""The memory sampler: the latest free-memory snapshot, read in the background so a request only
reads a cache and never waits on NVML, sysfs or Ollama."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

import structlog

from policies.context import GpuSnapshot
from proxy.config.settings import DEFAULT_INTERVAL_S, DEFAULT_RESERVE_BYTES
from proxy.facts.memory.source import MemorySource

log = structlog.get_logger("ollama_governor.memory")


class GpuSampler:
    """Keeps the latest ``GpuSnapshot``, read every ``interval_s`` by a background task.

    ``reserve_bytes`` (kept free for the desktop, CUDA context growth...) is stamped on every
    snapshot so policies subtract it. A read that raises (a source bug; sources report failures
    as snapshots) is logged once per streak and published as an unknown snapshot: stale numbers
    are wrong numbers for a fit decision. For the same reason ``snapshot`` turns unknown when no
    read completed for ``stale_after_s`` (a hung NVML or Ollama), default ``max(5 s, 10 intervals)``.
    """

    def __init__(
        self,
        source: MemorySource,
        interval_s: float = DEFAULT_INTERVAL_S,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        stale_after_s: float | None = None,
    ) -> None:
        if interval_s <= 0 or reserve_bytes < 0:
            raise ValueError("interval_s must be > 0 and reserve_bytes >= 0")
        self.source = source
        self.interval_s = interval_s
        self.reserve_bytes = reserve_bytes
        self.stale_after_s = max(5.0, 10 * interval_s) if stale_after_s is None else stale_after_s
        self._snapshot = GpuSnapshot(source=source.name, error="not sampled yet", reserve_bytes=reserve_bytes)
        self._read_monotonic_s: float | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._read_failing = False

    @property
    def snapshot(self) -> GpuSnapshot:
        """The latest sample; never reads the source, so the request path never waits."""
        snapshot = self._snapshot
        if self._read_monotonic_s is not None and snapshot.known:
            age_s = time.monotonic() - self._read_monotonic_s
            if age_s > self.stale_after_s:
                error = f"GPU sample is stale: last read {age_s:.1f} s ago"
                return replace(snapshot, devices=(), error=error)
        return snapshot

    async def refresh(self) -> GpuSnapshot:
        """Read now (after a model load, say) and return the new snapshot.

        Reads are serialised: a caller arriving during a background read waits for it and then
        reads again, so what it gets was read after it asked.
        """
        async with self._lock:
            try:
                snapshot = await self.source.read()
            except Exception as exc:
                if not self._read_failing:
                    log.error("gpu_read_failed", source=self.source.name, error=repr(exc), exc_info=True)
                self._read_failing = True
                error = f"{self.source.name} read failed: {exc!r}"
                snapshot = GpuSnapshot(source=self.source.name, error=error, kind=self._snapshot.kind)
            else:
                if self._read_failing:
                    log.info("gpu_recovered", source=self.source.name)
                self._read_failing = False
            self._snapshot = replace(snapshot, taken_at=time.time(), reserve_bytes=self.reserve_bytes)
            self._read_monotonic_s = time.monotonic()
            return self._snapshot

    async def run(self) -> None:
        """Read, sleep ``interval_s``, repeat until cancelled (a slow read delays the next one)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    def start(self) -> asyncio.Task[None]:
        """Start ``run`` in the background (idempotent); pair with ``stop`` in ``cleanup_ctx``."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="gpu-sampler")
        return self._task

    async def stop(self) -> None:
        """Cancel the background task, wait for it, then close the source."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.source.close()
