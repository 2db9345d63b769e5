"""The relays in flight, and the drain that ends them when the governor stops.

Every relay registers here while it runs (``track``). On SIGTERM the server calls ``announce``
then ``drain``: ``draining`` turns true at once (a readiness probe or load-balancer agent reports
it, docs/cluster.md), the relays get until the deadline to finish, and those still running are
cut. A cut relay ends its stream
the way its route ends one on an error (Ollama's NDJSON error line), or answers 503 when Ollama
had not answered yet, and reports the 503 so its result is recorded like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import aiohttp
import structlog

log = structlog.get_logger("ollama_governor.drain")

SHUTTING_DOWN = "ollama-governor is shutting down; retry the request"


class Flight:
    """One relay in progress: its task, Ollama's response once it has one, and why it was cut.

    ``with flight:`` registers it with its ``InFlight`` for as long as the relay runs (a flight
    with none, an untracked relay's, registers nowhere). A class, not ``@contextmanager``: the
    generator per relay cost more than the rest of tracking it.
    """

    __slots__ = ("_inflight", "cut_reason", "idle_s", "task", "timer", "upstream_response")

    def __init__(self, task: asyncio.Task[object] | None, inflight: InFlight | None = None) -> None:
        self.task = task
        self._inflight = inflight
        self.upstream_response: aiohttp.ClientResponse | None = None
        self.idle_s: float | None = None
        """The longest pause allowed inside the answer (None: no bound), once it has started."""
        self.timer: asyncio.TimerHandle | None = None
        """The answer's idle timer (``proxy.upstream.relay.IdleWatch``), cancelled when the relay ends."""
        self.cut_reason: str | None = None

    def __enter__(self) -> Flight:
        if self._inflight is not None:
            self._inflight.add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self._inflight is not None:
            self._inflight.discard(self)

    def cut(self, reason: str) -> None:
        """End this relay: close Ollama's stream (the relay then writes the route's error), or,
        while it still waits for Ollama's headers, cancel that wait (the relay answers 503)."""
        if self.cut_reason is not None:
            return
        self.cut_reason = reason
        if self.upstream_response is not None:
            self.upstream_response.close()
        elif self.task is not None:
            self.task.cancel()


@dataclass(frozen=True, slots=True)
class DrainOutcome:
    """How a drain went: relays that finished by themselves, were cut, and were still running."""

    finished: int
    cut: int
    left: int


class InFlight:
    """Every relay in progress, for the drain (one per application)."""

    def __init__(self) -> None:
        self._flights: set[Flight] = set()
        self._idle: asyncio.Event | None = None
        """Set when the last flight ends, while a drain waits for that (None otherwise)."""
        self._draining = False
        self._cutting = False

    @property
    def draining(self) -> bool:
        """True from the stop signal on: the governor finishes what it has and takes nothing new."""
        return self._draining

    def announce(self) -> None:
        """Say the governor is stopping (readiness 503, the agent ``drain``) while it still takes
        requests: the start of ``[balancer] announce``, before ``drain``."""
        self._draining = True

    def __len__(self) -> int:
        return len(self._flights)

    def track(self) -> Flight:
        """A flight for the calling relay, registered while ``with`` it runs. Once the drain is
        cutting, a new relay is born cut: it answers 503 without asking Ollama."""
        flight = Flight(asyncio.current_task(), self)
        if self._cutting:
            flight.cut_reason = SHUTTING_DOWN
        return flight

    def add(self, flight: Flight) -> None:
        """Count ``flight`` in (``with flight:`` calls this)."""
        self._flights.add(flight)

    def discard(self, flight: Flight) -> None:
        """Count ``flight`` out; the last one out wakes a waiting drain."""
        self._flights.discard(flight)
        if self._idle is not None and not self._flights:
            self._idle.set()

    async def drain(self, wait_s: float, grace_s: float) -> DrainOutcome:
        """Let relays finish for ``wait_s``, cut the rest, and give them ``grace_s`` to end."""
        self._draining = True
        running = len(self._flights)
        log.info("draining", in_flight=running, wait_s=round(wait_s, 3))
        await self._until_idle(wait_s)
        remaining = list(self._flights)
        self._cutting = True
        for flight in remaining:
            flight.cut(SHUTTING_DOWN)
        if remaining:
            await self._until_idle(grace_s)
        outcome = DrainOutcome(finished=running - len(remaining), cut=len(remaining), left=len(self._flights))
        log.info("drained", finished=outcome.finished, cut=outcome.cut, left=outcome.left)
        return outcome

    async def _until_idle(self, timeout_s: float) -> None:
        if not self._flights:
            return
        self._idle = idle = asyncio.Event()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), max(timeout_s, 0.0))
        finally:
            self._idle = None
