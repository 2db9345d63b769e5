"""The loop stall monitor: how late the loop wakes, and which step held it."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from proxy.govern.stall import StallMonitor, StepLog
from tests.conftest import eventually


class TestStepLog:
    def test_short_steps_are_not_noted(self) -> None:
        """A step that returned quickly cannot explain a stall and is not remembered."""
        steps = StepLog()
        steps.since("parse body", time.perf_counter())
        assert steps.last is None

    def test_a_long_step_is_noted(self) -> None:
        """A step that held the loop is remembered with how long it held it."""
        steps = StepLog()
        steps.since("rewrite body", time.perf_counter() - 0.3)
        assert steps.last is not None
        assert steps.last.name == "rewrite body" and steps.last.held_s >= 0.3


class TestReport:
    def test_names_the_step_that_ended_during_the_stall(self) -> None:
        """The last slow step is named when it ended after the monitor went to sleep."""
        steps = StepLog()
        monitor = StallMonitor(steps)
        slept_at = time.perf_counter()
        steps.note("policy slow", 0.4)
        with capture_logs() as logs:
            monitor.report(0.35, slept_at)
        [stall] = logs
        assert (stall["event"], stall["step"], stall["lag_ms"], stall["held_ms"]) == (
            "loop_stall",
            "policy slow",
            350.0,
            400.0,
        )
        assert (monitor.stalls, monitor.max_lag_s) == (1, 0.35)

    def test_an_older_step_is_not_blamed(self) -> None:
        """A slow step that ended before the monitor slept did not cause this stall."""
        steps = StepLog()
        steps.note("policy old", 0.4)
        monitor = StallMonitor(steps)
        with capture_logs() as logs:
            monitor.report(0.3, time.perf_counter())
        assert logs[0]["step"] is None and logs[0]["held_ms"] is None


class TestMonitor:
    async def test_a_blocked_loop_is_reported(self) -> None:
        """The running monitor logs loop_stall after the loop was held past the threshold."""
        monitor = StallMonitor(interval_s=0.02, threshold_s=0.1)
        monitor.start()
        try:
            await asyncio.sleep(0.05)  # let the monitor take its first nap
            with capture_logs() as logs:
                time.sleep(0.3)  # the fault: something holds the event loop
                await eventually(lambda: logs, what="loop_stall")
        finally:
            await monitor.stop()
        assert logs[0]["event"] == "loop_stall" and logs[0]["lag_ms"] >= 150
        assert monitor.stalls >= 1
