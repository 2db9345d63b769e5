"""Loop stall detection: a task that sleeps a short interval and measures how late it wakes.

Every request shares one event loop, so a step that holds it (a policy that reads a file or
sleeps, a very large body to parse) delays every stream at once. The chain notes each policy step
that held the loop in a ``StepLog``; when the monitor wakes late it logs ``loop_stall`` with the
lag, and names that step when it ended during the stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import structlog

log = structlog.get_logger("ollama_governor.loop")

STALL_INTERVAL_S = 0.1
"""How often the monitor wakes: ten timer callbacks a second, nothing else."""
STALL_THRESHOLD_S = 0.2
"""A wake-up later than this is a stall worth a warning: every stream paused that long."""
NOTE_AT_S = 0.05
"""A step shorter than this is not worth naming: it cannot explain a stall on its own."""


@dataclass(frozen=True, slots=True)
class HeldStep:
    """A step that ran on the loop without yielding: its name, how long, and when it ended."""

    name: str
    held_s: float
    ended_at: float
    """``time.perf_counter()`` when it returned."""


class StepLog:
    """The last step that held the loop, written by the chain and read by the monitor."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: HeldStep | None = None

    def note(self, name: str, held_s: float) -> None:
        """Remember that ``name`` just held the loop for ``held_s``."""
        self.last = HeldStep(name, held_s, time.perf_counter())

    def since(self, name: str, started: float) -> None:
        """Note ``name`` if it held the loop for long since ``started`` (a ``perf_counter`` time)."""
        held_s = time.perf_counter() - started
        if held_s >= NOTE_AT_S:
            self.note(name, held_s)


class StallMonitor:
    """Measures the loop's lateness and logs each stall (one per application)."""

    def __init__(
        self,
        steps: StepLog | None = None,
        *,
        interval_s: float = STALL_INTERVAL_S,
        threshold_s: float = STALL_THRESHOLD_S,
    ) -> None:
        self.steps = steps or StepLog()
        self.interval_s = interval_s
        self.threshold_s = threshold_s
        self.stalls = 0
        """Stalls seen since start."""
        self.max_lag_s = 0.0
        """The worst lateness seen since start."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring (call on the event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="loop-stall-monitor")

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            slept_at = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            lag_s = time.perf_counter() - slept_at - self.interval_s
            if lag_s >= self.threshold_s:
                self.report(lag_s, slept_at)

    def report(self, lag_s: float, since: float) -> None:
        """Log one stall of ``lag_s`` that happened after ``since`` (a ``perf_counter`` time)."""
        self.stalls += 1
        self.max_lag_s = max(self.max_lag_s, lag_s)
        step = self.steps.last
        culprit = step if step is not None and step.ended_at >= since else None
        log.warning(
            "loop_stall",
            lag_ms=round(lag_s * 1000, 1),
            step=culprit.name if culprit else None,
            held_ms=round(culprit.held_s * 1000, 1) if culprit else None,
            action="every stream paused; a policy that blocks must be async or set threaded = true",
        )
