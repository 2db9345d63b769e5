"""Compressed time: the fake sleeps ``delay / time_scale`` but reports simulated durations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoadTiming:
    """The load one request performed itself: its compressed sleep, in wall and simulated time."""

    sleep_wall_ns: int = 0
    simulated_s: float = 0.0
    waited_wall_ns: int = 0
    """Wall time spent waiting on other requests (the scheduler's queue, their loads and
    unloads), whose sleeps are compressed too."""


@dataclass(frozen=True)
class SimTime:
    """Conversions between wall time and simulated time for one ``time_scale``."""

    time_scale: float

    def scaled_ns(self, wall_ns: int) -> int:
        """Wall time spent waiting on compressed delays, in simulated time."""
        return round(wall_ns * self.time_scale)

    def compressed_ns(self, wall_ns: int, simulated_s: float) -> int:
        """Simulated time of a span whose wall time ``wall_ns`` included one compressed sleep of
        ``simulated_s``: the sleep counts at its simulated length, the overhead as it was."""
        return wall_ns + round(simulated_s * 1e9 * (1.0 - 1.0 / self.time_scale))

    def acquire_ns(self, wall_ns: int, timing: LoadTiming) -> int:
        """Simulated time of an acquire: its own load at the simulated length, the waits on
        other requests' loads and reloads (themselves compressed) scaled up, and the rest (the
        fake's own overhead, a busy machine's scheduling) as it was: scaled, a 0.1 ms hiccup
        would read as a load."""
        own = self.compressed_ns(timing.sleep_wall_ns, timing.simulated_s)
        waited = min(timing.waited_wall_ns, max(wall_ns - timing.sleep_wall_ns, 0))
        return own + self.scaled_ns(waited) + max(wall_ns - timing.sleep_wall_ns - waited, 0)
