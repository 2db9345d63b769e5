"""``python -m bench cluster``: N models over 3 Ollama nodes behind a balancer, three ways (simulated).

Simulated, all of it: no HAProxy and no Ollama run here. A discrete-event simulation in simulated
seconds (deterministic for a seed) plays one request stream against three balancing policies:

* ``round-robin``: each request to the next node;
* ``model-hash``: HAProxy's ``balance hash`` with ``hash-type consistent`` and
  ``hash-balance-factor 150`` over the model name, equal weights (the shipped config without
  agents); the ring and the bounded-load check follow HAProxy's lb_chash.c (weight x 16 points
  per server, the same eligibility arithmetic), with blake2b for its hash function;
* ``hash+agent``: the same, with each node's weight set every second by the governor's own
  agent weight (``proxy.balancer.signals.Weight``: free memory in steps of 10%, hysteresis, the
  default floor ``min_weight`` 50%) from the node's simulated free memory, as ``agent-inter 1s``
  would; ``hash+agent min 10`` with ``min_weight = 10``.

Each node is Ollama's scheduler as the project's fake models it (tests/fakeollama): a runner per
model, ``num_parallel`` slots, a load taking a fixed second plus the weights at a disk speed, idle
runners evicted least recently used when a load needs room, and a load that still does not fit
spilled (the rest in system RAM, every token slower), idle runners unloaded after keep_alive.
Figures: loads (every model load on any node), spills (loads that did not fit in VRAM), the
evictions they cost, and time to first token (queueing, loads and prompt evaluation included).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.stats import percentile
from policies.context import GpuDevice, GpuSnapshot
from policies.memory import GIB
from proxy.balancer.signals import Weight
from proxy.config.settings import DEFAULT_MIN_WEIGHT_PCT

NODES = 3
VRAM_BYTES = 24 * GIB
OTHER_USED_BYTES = (0, 0, 6 * GIB)
"""Memory another tenant holds on each node: node 3 has less room (a desktop, another service)."""
MODEL_SIZES_GIB = (9.0, 5.5, 3.5, 7.0, 12.0, 4.5, 6.5, 2.5)
"""Weights plus cache at the governed context, cycled over the models."""
NUM_PARALLEL = 4
KEEP_ALIVE_S = 300.0
LOAD_BASE_S = 1.0
LOAD_BYTES_PER_S = 1.5 * GIB
PROMPT_S = 0.4
TOKENS_PER_S = 30.0
REPLY_TOKENS = 150
SPILL_SLOWDOWN = 3.0
ZIPF_S = 1.0
ARRIVALS_PER_S = 0.6
AGENT_INTER_S = 1.0
HASH_BALANCE_FACTOR = 150
CONFIGURED_WEIGHT = 100
POINTS_PER_WEIGHT = 16
"""HAProxy's BE_WEIGHT_SCALE: each unit of weight is 16 points on the consistent-hash ring."""
MODEL_COUNTS = (4, 8, 16)
FULL_S = 2 * 3600.0
SMOKE_S = 300.0
SEEDS = (1, 2, 3)
POLICIES = ("round-robin", "model-hash", "hash+agent", "hash+agent min 10")
"""``hash+agent`` runs the agent at its default ``min_weight`` (50); ``min 10`` lets the weight
follow free memory nearly all the way down."""


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request: when it arrives, for which model, how long its reply is."""

    arrival_s: float
    model: str
    reply_tokens: int


@dataclass
class Runner:
    """A model loaded on a node (or loading): its VRAM, whether it spilled, its slots and queue."""

    model: str
    vram_bytes: int
    spilled: bool
    ready_s: float
    active: int = 0
    queue: deque[Request] = field(default_factory=deque)
    last_used_s: float = 0.0

    def idle(self, now_s: float) -> bool:
        return self.active == 0 and not self.queue and now_s >= self.ready_s


@dataclass
class Figures:
    """What one policy did to one request stream."""

    loads: int = 0
    spills: int = 0
    evictions: int = 0
    ttft_s: list[float] = field(default_factory=list)


class Node:
    """One Ollama as the project's fake models its placement (tests/fakeollama): a load evicts
    idle runners, least recently used first, until it fits, and spills what still does not fit
    (busy runners are never evicted); idle runners are unloaded after keep_alive."""

    def __init__(self, index: int, sizes: dict[str, int], figures: Figures, schedule: Schedule) -> None:
        self.index = index
        self.sizes = sizes
        self.figures = figures
        self.schedule = schedule
        self.runners: dict[str, Runner] = {}
        self.in_flight = 0

    def free_bytes(self, now_s: float) -> int:
        self._expire(now_s)
        used = OTHER_USED_BYTES[self.index] + sum(r.vram_bytes for r in self.runners.values())
        return max(VRAM_BYTES - used, 0)

    def snapshot(self, now_s: float) -> GpuSnapshot:
        """The memory this node's governor would sample now."""
        free = self.free_bytes(now_s)
        device = GpuDevice(
            index=0, name="sim", total_bytes=VRAM_BYTES, free_bytes=free, used_bytes=VRAM_BYTES - free
        )
        return GpuSnapshot(source="nvml", devices=(device,), taken_at=now_s)

    def _expire(self, now_s: float) -> None:
        for name, runner in list(self.runners.items()):
            if runner.idle(now_s) and now_s - runner.last_used_s >= KEEP_ALIVE_S:
                del self.runners[name]

    def dispatch(self, request: Request, now_s: float) -> None:
        self.in_flight += 1
        runner = self.runners.get(request.model)
        if runner is None:
            runner = self._load(request.model, now_s)
            self.schedule(runner.ready_s, lambda t, r=runner: self._start(r, t))
        runner.queue.append(request)
        self._start(runner, now_s)

    def _load(self, model: str, now_s: float) -> Runner:
        size, free = self.sizes[model], self.free_bytes(now_s)
        idle = sorted(
            (r for r in self.runners.values() if r.idle(now_s)), key=lambda r: (r.last_used_s, r.model)
        )
        for victim in idle:
            if free >= size:
                break
            del self.runners[victim.model]
            free += victim.vram_bytes
            self.figures.evictions += 1
        spilled = free < size
        self.figures.loads += 1
        self.figures.spills += spilled
        runner = Runner(model, min(size, free), spilled, now_s + LOAD_BASE_S + size / LOAD_BYTES_PER_S)
        self.runners[model] = runner
        return runner

    def _start(self, runner: Runner, now_s: float) -> None:
        if now_s < runner.ready_s or self.runners.get(runner.model) is not runner:
            return
        slow = SPILL_SLOWDOWN if runner.spilled else 1.0
        while runner.active < NUM_PARALLEL and runner.queue:
            request = runner.queue.popleft()
            runner.active += 1
            first_token_s = now_s + PROMPT_S * slow
            self.figures.ttft_s.append(first_token_s - request.arrival_s)
            done_s = first_token_s + slow * request.reply_tokens / TOKENS_PER_S
            self.schedule(done_s, lambda t, r=runner: self._finish(r, t))

    def _finish(self, runner: Runner, now_s: float) -> None:
        runner.active -= 1
        runner.last_used_s = now_s
        self.in_flight -= 1
        self._start(runner, now_s)


Schedule = Callable[[float, Callable[[float], None]], None]


class Policy(Protocol):
    """Picks the node for a request, as the balancer would."""

    def pick(self, model: str, nodes: Sequence[Node]) -> Node: ...

    def tick(self, nodes: Sequence[Node], now_s: float) -> None: ...


class RoundRobin:
    """Each request to the next node."""

    def __init__(self) -> None:
        self._next = itertools.cycle(range(NODES))

    def pick(self, model: str, nodes: Sequence[Node]) -> Node:
        return nodes[next(self._next)]

    def tick(self, nodes: Sequence[Node], now_s: float) -> None:
        return None


def ring_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


class ConsistentHash:
    """HAProxy's consistent-hash ring with bounded load (lb_chash.c), weights optionally from
    each node's agent."""

    def __init__(self, *, agent_min_weight_pct: int | None) -> None:
        self.agent = agent_min_weight_pct is not None
        self.weights = [CONFIGURED_WEIGHT] * NODES
        self._agents = [Weight(min_pct=agent_min_weight_pct or 100) for _ in range(NODES)]
        self._ring: list[tuple[int, int]] = []
        self._keys: list[int] = []
        self._build()

    def _build(self) -> None:
        self._ring = sorted(
            (ring_hash(f"server{index}:{point}"), index)
            for index, weight in enumerate(self.weights)
            for point in range(weight * POINTS_PER_WEIGHT)
        )
        self._keys = [key for key, _ in self._ring]

    def tick(self, nodes: Sequence[Node], now_s: float) -> None:
        if not self.agent:
            return
        weights = [
            CONFIGURED_WEIGHT * agent(node.snapshot(now_s)) // 100
            for agent, node in zip(self._agents, nodes, strict=True)
        ]
        if weights != self.weights:
            self.weights = weights
            self._build()

    def _eligible(self, node: Node, nodes: Sequence[Node]) -> bool:
        served = sum(n.in_flight for n in nodes)
        total_weight = sum(self.weights)
        tot_slots = ((served + 1) * HASH_BALANCE_FACTOR + 99) // 100
        per_weight, remainder = divmod(tot_slots, total_weight)
        weight = self.weights[node.index]
        slots = weight * per_weight + (weight * remainder + total_weight - 1) // total_weight
        return node.in_flight < slots

    def pick(self, model: str, nodes: Sequence[Node]) -> Node:
        start = bisect.bisect_left(self._keys, ring_hash(model)) % len(self._ring)
        first: Node | None = None
        seen: set[int] = set()
        for offset in range(len(self._ring)):
            node = nodes[self._ring[(start + offset) % len(self._ring)][1]]
            if node.index in seen:
                continue
            seen.add(node.index)
            first = first or node
            if self._eligible(node, nodes):
                return node
            if len(seen) == NODES:
                break
        assert first is not None
        return first


def make_policy(name: str) -> Policy:
    if name == "round-robin":
        return RoundRobin()
    if name == "model-hash":
        return ConsistentHash(agent_min_weight_pct=None)
    return ConsistentHash(agent_min_weight_pct=10 if name.endswith("min 10") else DEFAULT_MIN_WEIGHT_PCT)


def requests(model_count: int, duration_s: float, seed: int) -> list[Request]:
    """A Poisson stream of requests over Zipf-popular models, the same for every policy."""
    rng = random.Random(seed)
    models = [f"model-{index:02d}" for index in range(model_count)]
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(model_count)]
    out: list[Request] = []
    now_s = 0.0
    while True:
        now_s += rng.expovariate(ARRIVALS_PER_S)
        if now_s >= duration_s:
            return out
        model = rng.choices(models, weights)[0]
        reply = max(1, int(rng.expovariate(1 / REPLY_TOKENS)))
        out.append(Request(now_s, model, reply))


def simulate(policy_name: str, model_count: int, stream: list[Request]) -> Figures:
    """Play ``stream`` through one policy and three nodes; what it cost."""
    figures = Figures()
    events: list[tuple[float, int, Callable[[float], None]]] = []
    order = itertools.count()

    def schedule(at_s: float, action: Callable[[float], None]) -> None:
        heapq.heappush(events, (at_s, next(order), action))

    sizes = {
        f"model-{index:02d}": int(MODEL_SIZES_GIB[index % len(MODEL_SIZES_GIB)] * GIB)
        for index in range(model_count)
    }
    nodes = [Node(index, sizes, figures, schedule) for index in range(NODES)]
    policy = make_policy(policy_name)
    end_s = stream[-1].arrival_s if stream else 0.0

    def tick(now_s: float) -> None:
        policy.tick(nodes, now_s)
        if now_s < end_s:
            schedule(now_s + AGENT_INTER_S, tick)

    schedule(0.0, tick)
    for request in stream:
        schedule(request.arrival_s, lambda t, r=request: policy.pick(r.model, nodes).dispatch(r, t))
    while events:
        at_s, _, action = heapq.heappop(events)
        action(at_s)
    return figures


def run(smoke: bool) -> dict[str, Any]:
    """Every model count under every policy, a few seeds each; figures summed over the seeds."""
    duration_s = SMOKE_S if smoke else FULL_S
    seeds = SEEDS[:1] if smoke else SEEDS
    rows = []
    for model_count in MODEL_COUNTS:
        streams = [requests(model_count, duration_s, seed) for seed in seeds]
        for name in POLICIES:
            loads = spills = evictions = 0
            samples: list[float] = []
            for stream in streams:
                figures = simulate(name, model_count, stream)
                loads, spills = loads + figures.loads, spills + figures.spills
                evictions += figures.evictions
                samples += figures.ttft_s
            ttft = sorted(samples)
            rows.append(
                {
                    "models": model_count,
                    "policy": name,
                    "requests": len(ttft),
                    "loads": loads,
                    "spills": spills,
                    "evictions": evictions,
                    "ttft_p50_s": round(percentile(ttft, 0.50), 2),
                    "ttft_p99_s": round(percentile(ttft, 0.99), 2),
                }
            )
    return {
        "simulated": True,
        "nodes": NODES,
        "vram_gib": VRAM_BYTES / GIB,
        "other_used_gib": [b / GIB for b in OTHER_USED_BYTES],
        "duration_s": duration_s,
        "seeds": list(seeds),
        "arrivals_per_s": ARRIVALS_PER_S,
        "rows": rows,
    }


def render(result: dict[str, Any], *, markdown: bool = False) -> str:
    """The table: per model count and policy, loads, spills, evictions and time to first token."""
    header = ["models", "policy", "requests", "loads", "spills", "evictions", "TTFT p50", "TTFT p99"]
    rows = [
        [
            str(r["models"]),
            r["policy"],
            str(r["requests"]),
            str(r["loads"]),
            str(r["spills"]),
            str(r["evictions"]),
            f"{r['ttft_p50_s']:.2f} s",
            f"{r['ttft_p99_s']:.2f} s",
        ]
        for r in result["rows"]
    ]
    title = (
        f"cluster (simulated): {result['nodes']} nodes x {result['vram_gib']:g} GiB "
        f"(another tenant holds {', '.join(f'{g:g}' for g in result['other_used_gib'])} GiB), "
        f"{result['arrivals_per_s']:g} requests/s for {result['duration_s'] / 60:g} min x {len(result['seeds'])} seeds"
    )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return title + "\n\n" + "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    text = [
        " ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return title + "\n" + "\n".join(text)
