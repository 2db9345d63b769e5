"""What a load balancer in front of several governors is told: ready or not, and how much room.

Ready means Ollama answers and the governor is not draining (from SIGTERM on). The weight is the
host's headroom (free memory minus the reserve, over the total) in coarse steps with a floor and
some hysteresis, so a model's place on the balancer's hash ring moves only when the headroom
really changes: every move is a model load on another node. docs/cluster.md says how HAProxy,
nginx and Kubernetes read these.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.context import GpuSnapshot
from proxy.govern.boundary import describe
from proxy.upstream.client import Upstream
from proxy.upstream.inflight import InFlight

WEIGHT_STEP_PCT = 10
"""The agent's weights are multiples of this (above the floor): small swings in free memory
(a CUDA context growing, a cache) must not move models between nodes."""
UNKNOWN_WEIGHT_PCT = 100
"""The weight answered when no memory source reads this host: the weight the balancer's own
config gives the node, unchanged (no evidence of pressure, no claim of room)."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether this node should get new requests, and why not."""

    draining: bool
    """The governor is stopping: it finishes what it has and should get nothing new."""
    ollama_version: str | None = None
    """What ``/api/version`` said (None while draining: Ollama is not asked then)."""
    error: str | None = None
    """Why Ollama did not answer (None when it did, or while draining)."""

    @property
    def ready(self) -> bool:
        """True when Ollama answers and the governor is not draining."""
        return not self.draining and self.error is None


async def check_readiness(upstream: Upstream, inflight: InFlight, *, timeout_s: float) -> Readiness:
    """Ask Ollama for its version (within ``timeout_s``) unless the governor is draining."""
    if inflight.draining:
        return Readiness(draining=True)
    try:
        answer = await upstream.get_json("/api/version", timeout_s=timeout_s)
    except Exception as exc:
        return Readiness(draining=inflight.draining, error=describe(exc))
    version = answer.get("version") if isinstance(answer, dict) else None
    return Readiness(draining=inflight.draining, ollama_version=version if isinstance(version, str) else None)


def headroom_pct(snapshot: GpuSnapshot | None) -> float | None:
    """Free memory less the reserve, as a percentage of the total; None when unknown."""
    if snapshot is None or not snapshot.known:
        return None
    free, total = snapshot.free_bytes, snapshot.total_bytes
    if free is None or not total:
        return None
    usable = max(free - snapshot.reserve_bytes, 0)
    return min(100.0 * usable / total, 100.0)


class Weight:
    """The agent's weight for a headroom: the nearest multiple of ``WEIGHT_STEP_PCT``, never below
    ``min_pct``, and the previous weight kept while the headroom stays within one step of it, so a
    headroom hovering at a boundary does not flip the weight at every check.

    It remembers its last answer (one per governor, so every balancer polling it sees the same).
    """

    def __init__(self, min_pct: int) -> None:
        self.min_pct = min_pct
        self._last: int | None = None

    def __call__(self, snapshot: GpuSnapshot | None) -> int:
        """The weight (percent of the balancer's configured weight) for ``snapshot``."""
        raw = headroom_pct(snapshot)
        if raw is None:
            self._last = None
            return UNKNOWN_WEIGHT_PCT
        last = self._last
        if last is not None and abs(raw - last) < WEIGHT_STEP_PCT:
            return max(self.min_pct, last)
        stepped = int(raw / WEIGHT_STEP_PCT + 0.5) * WEIGHT_STEP_PCT
        self._last = stepped
        return max(self.min_pct, stepped)


def agent_answer(readiness: Readiness, weight_pct: int) -> str:
    """The line HAProxy's agent check reads: ``drain`` when not ready, else ``up ready N%``.

    ``ready`` ends a drain this agent announced before (HAProxy keeps an agent's ``drain`` until
    the agent says ``ready``), ``up`` a down state, and ``N%`` sets the weight relative to the
    server's configured one.
    """
    if not readiness.ready:
        return "drain\n"
    return f"up ready {weight_pct}%\n"
