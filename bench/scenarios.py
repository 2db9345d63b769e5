"""What governing buys: client scripts replayed with and without the governor on a simulated GPU.

Why a simulation: the effects the governor exists for (a context that spills a model to system
RAM, reloads from clients that disagree on ``num_ctx``, prompts cut by Ollama's default context)
take a GPU, a 17 GB model and minutes per load to show for real. The fake Ollama of the tests
(``tests/fake_ollama.py``) models exactly those effects: the llama.cpp memory footprint of each
load against a fixed VRAM size, the spill when it does not fit, 10x slower generation and loads
when spilled, reloads on a ``num_ctx`` change, and silent truncation. Its delays are compressed
by ``TIME_SCALE`` and reported back in simulated time, so a full run takes seconds of wall time
while the figures read as they would on the seed report's host (~10 tok/s on the GPU, ~1 tok/s
spilled, tens of seconds to minutes per load).

Each scenario runs one client script twice on a fresh fake (Ollama 0.33's rules): straight at
the fake ("without") and through the governor ("with": the real proxy app in process,
``[ollama] num_parallel`` matching the fake, the scenario's policies or, with none, the built-in
rule of a governor without a config file, and NVML replaced by a fake whose used memory is what
the fake Ollama's runners occupy; a CPU-only host has no memory source). Every figure comes from
what the fake ran or what the client got back, never from the governor's own view.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict

import anthropic
import ollama
import openai
import structlog.testing
from aiohttp import web

from policies.memory import GIB
from proxy.app import create_app, make_runner
from proxy.config import parse_config
from proxy.facts.memory import MemorySource, NoGpuSource, NvmlSource
from proxy.govern.record import GovernedRequest
from proxy.govern.rules import Governor
from proxy.keys import MEMORY, PIPELINE
from tests.fake_nvml import following
from tests.fake_ollama import (
    FakeModel,
    FakeOllama,
    gemma3_4b,
    gemma3_27b,
    gemma3_270m,
    lfm2_1_2b,
    llama3_1_8b,
    nomic_embed_text,
)

TIME_SCALE: Final = 500.0
SMOKE_TIME_SCALE: Final = 5000.0
"""A smoke run compresses further: it checks that every path works, its wall time means nothing."""
"""Simulated seconds per wall second: a 2-minute spilled load sleeps a quarter of a second."""

DECODE_BYTES_PER_S: Final = gemma3_27b().weights_bytes * 10.0
"""Weights streamed per second while generating. Generation is memory-bound (every token reads
every weight once), so tokens/s is this over the weights' size: 10 tok/s for gemma3:27b as in the
seed report, ~35 tok/s for llama3.1:8b. Spilled, the fake divides it by its ``spill_slowdown``."""

LOAD_BYTES_PER_S: Final = 1.5e9
"""Weights read per second by a load on the GPU (~12 s for gemma3:27b; spilled: ~2 minutes)."""

SPILL_SLOWDOWN: Final = 10.0
"""How much slower generation, prompt processing and loading get once a model spills."""

REPLY_TOKENS: Final = 128
"""Tokens generated per request (the scripts set no ``num_predict``)."""

SHORT_PROMPT: Final = "Summarise yesterday's incident review in three bullet points for the team channel."
LONG_PROMPT: Final = "Quarterly report paragraph. " * 2860
"""~80,000 characters: 20,000 tokens by the fake's 4 characters per token."""
TEN_K_PROMPT: Final = "Quarterly report paragraph. " * 1430
"""~40,000 characters: 10,000 tokens, past a CPU host's 4096 default."""

SIMULATION_NOTE: Final = (
    "These figures come from a simulation, not from a GPU: the fake Ollama of the tests "
    "(tests/fake_ollama.py) runs the scripts in compressed time and reports durations in "
    "simulated seconds. It models each load's memory as llama.cpp sizes it (weights + KV cache "
    "with GQA, sliding-window layers, num_ctx x num_parallel, + compute buffer) against a fixed "
    "VRAM size; a load that does not fit spills to system RAM, which makes generation, prompt "
    "processing and loading 10x slower (~10 tok/s on the GPU, ~1 tok/s spilled for gemma3:27b; "
    f"loads read weights at {LOAD_BYTES_PER_S / 1e9:g} GB/s on the GPU). Any change of num_ctx "
    "reloads the model; a prompt longer than num_ctx is cut silently; the default num_ctx follows "
    "Ollama's VRAM tiers (4096 below 23 GiB, 32768 below 47 GiB, then 262144 clamped to the "
    "trained length). Several models follow Ollama 0.33's scheduler: a model loaded beside "
    "others must pass a pre-flight in which Ollama's own estimate (no sliding window) stays "
    "within 80% of free VRAM, else the idle model with the shortest keep_alive is unloaded "
    "first; at most 3 models per GPU. Not modelled: slower "
    "generation at longer contexts, a partial spill costing less than a full one, parallel "
    "slots sharing the GPU, prompt caching, keep_alive expiry (runs are back to back)."
)


Kind = Literal["generate", "chat", "embed", "openai.chat", "openai.completions", "anthropic.messages"]
"""The route an ask goes to: Ollama's own (the ``ollama`` client) or an OpenAI- or Anthropic-style
one (the ``openai`` or ``anthropic`` SDK), which cannot name a ``num_ctx``."""
COMPAT_KINDS: Final = frozenset({"openai.chat", "openai.completions", "anthropic.messages"})


@dataclass(frozen=True)
class Ask:
    """One request of a client script: which client sends it, the prompt, the ``num_ctx`` asked
    (None on the OpenAI- and Anthropic-style routes, which cannot carry one), the route and the
    model (None: the scenario's first model)."""

    client: int
    prompt: str
    num_ctx: int | None
    kind: Kind = "generate"
    model: str | None = None


@dataclass(frozen=True)
class Scenario:
    """A host, a model, a client script and the governor's policies for it.

    ``rounds`` run in order; the requests of one round are sent concurrently (different clients
    at the same moment), so ``num_parallel`` slots are actually used.
    """

    key: str
    title: str
    models: tuple[Callable[[], FakeModel], ...]
    vram_bytes: int | None
    """Simulated VRAM; None is a CPU-only host (no GPU, every model in system RAM)."""
    num_parallel: int
    rounds: tuple[tuple[Ask, ...], ...]
    policies: tuple[dict[str, Any], ...] | None
    """The rule's policies; None runs the governor with no config file (its built-in rule)."""
    governor_note: str

    def __post_init__(self) -> None:
        for ask in (a for r in self.rounds for a in r):
            if ask.kind in COMPAT_KINDS and ask.num_ctx is not None:
                raise ValueError(f"scenario {self.key}: the {ask.kind} route cannot carry num_ctx")

    @property
    def requests(self) -> int:
        return sum(len(r) for r in self.rounds)

    @property
    def model(self) -> str:
        """The model a request names when it names none."""
        return self.models[0]().full_name

    def host(self) -> str:
        """The host as the table's footnotes describe it."""
        names = " + ".join(make().name for make in self.models)
        memory = "CPU only" if self.vram_bytes is None else f"{self.vram_bytes / GIB:g} GiB GPU"
        return f"{names}, {memory}, num_parallel {self.num_parallel}, {self.requests} requests"


class SideResult(TypedDict):
    """What one run of a script produced, in simulated seconds except ``wall_s``."""

    requests: int
    loads: int
    loaded_num_ctx: list[int]
    load_s: float
    median_eval_tokens_per_s: float | None
    spilled_requests: int
    truncated_prompts: int
    prompt_tokens_evaluated: int
    evictions: int
    predicted: int
    """Governed requests whose scheduler action was both predicted and observed (0 without)."""
    predicted_right: int
    """Of those, the ones where Ollama did what was predicted (action and evicted models)."""
    wall_s: float


class ScenarioResult(TypedDict):
    key: str
    title: str
    host: str
    governor: str
    without: SideResult
    with_governor: SideResult


def scenarios(*, smoke: bool) -> list[Scenario]:
    """The client scripts; ``smoke`` keeps their shape with fewer requests."""
    ctx_ask = 131072
    seed_rounds_p1 = 2 if smoke else 4
    seed_rounds_p3 = 1 if smoke else 2
    alternations = 2 if smoke else 5
    mix = "SL" * 2 if smoke else "SLSSLSLSSL"
    headroom: tuple[dict[str, Any], ...] = ({"use": "headroom"},)
    return [
        Scenario(
            key="a1",
            title="gemma3:27b asks 131072, parallel 1",
            models=(gemma3_27b,),
            vram_bytes=24 * GIB,
            num_parallel=1,
            rounds=tuple((Ask(0, SHORT_PROMPT, ctx_ask),) for _ in range(seed_rounds_p1)),
            policies=headroom,
            governor_note="headroom (defaults)",
        ),
        Scenario(
            key="a3",
            title="gemma3:27b asks 131072, parallel 3",
            models=(gemma3_27b,),
            vram_bytes=24 * GIB,
            num_parallel=3,
            rounds=tuple(
                tuple(Ask(c, SHORT_PROMPT, ctx_ask) for c in range(3)) for _ in range(seed_rounds_p3)
            ),
            policies=headroom,
            governor_note="headroom (defaults)",
        ),
        Scenario(
            key="b",
            title="two clients alternate 4096 / 16384",
            models=(gemma3_27b,),
            vram_bytes=24 * GIB,
            num_parallel=1,
            rounds=tuple((Ask(i % 2, SHORT_PROMPT, (4096, 16384)[i % 2]),) for i in range(2 * alternations)),
            policies=headroom,
            governor_note="headroom (defaults)",
        ),
        Scenario(
            key="c",
            title="long (20K-token) and short prompts, no num_ctx",
            models=(llama3_1_8b,),
            vram_bytes=16 * GIB,
            num_parallel=1,
            rounds=tuple((Ask(0, LONG_PROMPT if kind == "L" else SHORT_PROMPT, None),) for kind in mix),
            policies=({"use": "headroom", "max_ctx": 32768},),
            governor_note="headroom, max_ctx 32768",
        ),
        Scenario(
            key="d",
            title="CPU only: clients alternate 2048 / 8192 / unset",
            models=(gemma3_270m,),
            vram_bytes=None,
            num_parallel=1,
            rounds=tuple(
                (Ask(i % 3, SHORT_PROMPT, (2048, 8192, None)[i % 3]),) for i in range(3 * alternations)
            ),
            policies=None,
            governor_note="no config file (the built-in rule)",
        ),
        Scenario(
            key="e",
            title="CPU only: a 10K-token prompt, no num_ctx",
            models=(gemma3_270m,),
            vram_bytes=None,
            num_parallel=1,
            rounds=tuple((Ask(0, TEN_K_PROMPT if kind == "L" else SHORT_PROMPT, None),) for kind in mix),
            policies=None,
            governor_note="no config file (the built-in rule)",
        ),
        Scenario(
            key="f",
            title="RAG: embed the question, then chat, 8 GiB GPU",
            models=(gemma3_4b, nomic_embed_text),
            vram_bytes=8 * GIB,
            num_parallel=1,
            rounds=tuple(
                step
                for turn in range(alternations * 2)
                for step in (
                    (Ask(0, f"{SHORT_PROMPT} ({turn})", None, "embed", "nomic-embed-text:latest"),),
                    (Ask(1, f"{SHORT_PROMPT} ({turn})", None, "chat"),),
                )
            ),
            policies=None,
            governor_note="no config file (the built-in rule)",
        ),
        Scenario(
            key="g",
            title="OpenAI-style clients, gemma3:27b, parallel 3",
            models=(gemma3_27b,),
            vram_bytes=24 * GIB,
            num_parallel=3,
            rounds=tuple(
                tuple(Ask(c, SHORT_PROMPT, None, "openai.chat") for c in range(3))
                for _ in range(seed_rounds_p3)
            ),
            policies=None,
            governor_note="no config file (the built-in rule)",
        ),
        Scenario(
            key="h",
            title="/api/chat at 32768, then OpenAI-style long prompts",
            models=(llama3_1_8b,),
            vram_bytes=16 * GIB,
            num_parallel=1,
            rounds=tuple(
                (
                    Ask(0, SHORT_PROMPT, 32768, "chat")
                    if kind == "N"
                    else Ask(1, LONG_PROMPT if kind == "L" else SHORT_PROMPT, None, "openai.chat"),
                )
                for kind in ("NLS" if smoke else "NLSNLS")
            ),
            policies=None,
            governor_note="no config file (the built-in rule)",
        ),
        Scenario(
            key="i",
            title="two chat models alternate, each asks 32768, parallel 2",
            models=(llama3_1_8b, gemma3_4b),
            vram_bytes=24 * GIB,
            num_parallel=2,
            rounds=tuple(
                (Ask(i % 2, SHORT_PROMPT, 32768, "chat", ("llama3.1:8b", "gemma3:4b")[i % 2]),)
                for i in range(2 * alternations)
            ),
            policies=None,
            governor_note="no config file (the built-in rule)",
        ),
        Scenario(
            key="j",
            title="gemma3:27b asks 131072 beside a small helper",
            models=(gemma3_27b, gemma3_270m),
            vram_bytes=24 * GIB,
            num_parallel=1,
            rounds=tuple(
                step
                for _ in range(alternations)
                for step in (
                    (Ask(0, SHORT_PROMPT, ctx_ask, "chat"),),
                    (Ask(1, SHORT_PROMPT, None, "generate", "gemma3-270m:latest"),),
                )
            ),
            policies=None,
            governor_note="no config file (the built-in rule)",
        ),
        *(
            Scenario(
                key=key,
                title=f"three models round-robin, no num_ctx, parallel 2, {gib} GiB",
                models=(llama3_1_8b, gemma3_4b, lfm2_1_2b),
                vram_bytes=gib * GIB,
                num_parallel=2,
                rounds=tuple(
                    (
                        Ask(
                            i % 3,
                            SHORT_PROMPT,
                            None,
                            "chat",
                            ("llama3.1:8b", "gemma3:4b", "lfm2:1.2b")[i % 3],
                        ),
                    )
                    for i in range(3 * alternations)
                ),
                policies=None,
                governor_note="no config file (the built-in rule)",
            )
            for key, gib in (("k", 48), ("l", 24))
        ),
    ]


def _fake_for(scenario: Scenario, time_scale: float) -> FakeOllama:
    models = [make() for make in scenario.models]
    return FakeOllama(
        models=models,
        vram_bytes=scenario.vram_bytes,
        num_parallel=scenario.num_parallel,
        token_delay_s=models[0].weights_bytes / DECODE_BYTES_PER_S,
        spill_slowdown=SPILL_SLOWDOWN,
        load_bytes_per_s=LOAD_BYTES_PER_S,
        reply_tokens=REPLY_TOKENS,
        time_scale=time_scale,
    )


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on a free loopback port with the production runner settings."""
    runner = make_runner(app, shutdown_timeout_s=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


Reply = ollama.GenerateResponse | ollama.ChatResponse | ollama.EmbedResponse | None
"""What the client got back; None for an OpenAI- or Anthropic-style reply, whose figures (it has
no durations) are read from what the fake ran instead."""


@dataclass
class Clients:
    """One script client: the official client of each route family, against one URL."""

    ollama: ollama.AsyncClient
    openai: openai.AsyncOpenAI
    anthropic: anthropic.AsyncAnthropic

    @classmethod
    def at(cls, url: str) -> Clients:
        return cls(
            ollama.AsyncClient(host=url),
            openai.AsyncOpenAI(base_url=url + "/v1", api_key="ollama", max_retries=0),
            anthropic.AsyncAnthropic(base_url=url, api_key="ollama", max_retries=0),
        )

    async def close(self) -> None:
        await self.ollama.close()  # type: ignore[no-untyped-call]  # unannotated in ollama
        await self.openai.close()
        await self.anthropic.close()


async def _ask(clients: Clients, model: str, ask: Ask) -> Reply:
    options = None if ask.num_ctx is None else {"num_ctx": ask.num_ctx}
    name = ask.model or model
    messages: Any = [{"role": "user", "content": ask.prompt}]
    if ask.kind == "openai.chat":
        await clients.openai.chat.completions.create(model=name, messages=messages)
        return None
    if ask.kind == "openai.completions":
        await clients.openai.completions.create(model=name, prompt=ask.prompt, max_tokens=REPLY_TOKENS)
        return None
    if ask.kind == "anthropic.messages":
        await clients.anthropic.messages.create(model=name, max_tokens=REPLY_TOKENS, messages=messages)
        return None
    client = clients.ollama
    if ask.kind == "embed":
        return await client.embed(model=name, input=ask.prompt, options=options)
    if ask.kind == "chat":
        return await client.chat(
            model=name, messages=[{"role": "user", "content": ask.prompt}], options=options
        )
    return await client.generate(model=name, prompt=ask.prompt, options=options)


async def _run_script(url: str, model: str, scenario: Scenario) -> list[Reply]:
    """Send the scenario's rounds in order, each round's requests at once, from separate clients."""
    clients = [Clients.at(url) for _ in range(1 + max(a.client for r in scenario.rounds for a in r))]
    replies: list[Reply] = []
    try:
        for round_ in scenario.rounds:
            replies += await asyncio.gather(*(_ask(clients[a.client], model, a) for a in round_))
    finally:
        for client in clients:
            await client.close()
    return replies


def _side_result(
    fake: FakeOllama, replies: Sequence[Reply], wall_s: float, records: Sequence[GovernedRequest] = ()
) -> SideResult:
    """The figures of one run. A generation's come from what the fake ran (the same numbers its
    final chunk reports, and the only source for OpenAI- and Anthropic-style replies, which carry
    no durations); an embedding's from the client's reply."""
    embeds = [r for r in replies if isinstance(r, ollama.EmbedResponse)]
    runs = fake.completions
    rates = [c.eval_tokens / c.eval_ns * 1e9 for c in runs if c.eval_tokens and c.eval_ns]
    return SideResult(
        requests=len(replies),
        loads=len(fake.loads),
        loaded_num_ctx=[num_ctx for _, num_ctx in fake.loads],
        load_s=(sum(c.load_ns for c in runs) + sum(r.load_duration or 0 for r in embeds)) / 1e9,
        median_eval_tokens_per_s=statistics.median(rates) if rates else None,
        spilled_requests=sum(c.spilled for c in fake.completions),
        truncated_prompts=len(fake.truncated),
        prompt_tokens_evaluated=sum(c.prompt_tokens for c in runs)
        + sum(r.prompt_eval_count or 0 for r in embeds),
        evictions=len(fake.evictions),
        predicted=len(checked := [r.prediction_held for r in records if r.prediction_held is not None]),
        predicted_right=sum(checked),
        wall_s=wall_s,
    )


def _memory_source(fake: FakeOllama) -> MemorySource:
    """What the governor reads free memory from: a GPU that follows the fake's runners, or none
    on a CPU-only host (the governor then decides without a budget)."""
    if fake.vram_bytes is None:
        return NoGpuSource("CPU-only host: no GPU source")
    return NvmlSource(nvml=following(fake, f"simulated {fake.vram_bytes / GIB:g} GiB GPU"))


async def run_side(scenario: Scenario, *, governed: bool, time_scale: float = TIME_SCALE) -> SideResult:
    """Run the scenario's script on a fresh fake, straight at it or through the governor."""
    fake = _fake_for(scenario, time_scale)
    model = scenario.model
    fake_runner, url = await _serve(fake.app)
    proxy_runner: web.AppRunner | None = None
    records: list[GovernedRequest] = []
    try:
        if governed:
            document: dict[str, Any] = {
                "upstream": url,
                "ollama": {"num_parallel": scenario.num_parallel, "ps_interval": "10s"},
                "gpu": {"interval": "50ms"},
            }
            if scenario.policies is not None:
                document["rules"] = [{"models": ["*"], "policies": [dict(p) for p in scenario.policies]}]
            config = parse_config(document, source=f"bench scenario {scenario.key}")
            app = create_app(
                Governor.build(config), memory_source=_memory_source(fake), sinks=[records.append]
            )
            proxy_runner, url = await _serve(app)
            await app[MEMORY].refresh()
        started = time.perf_counter()
        with structlog.testing.capture_logs():  # the governor's result lines are not the report
            replies = await _run_script(url, model, scenario)
            if proxy_runner is not None:
                await proxy_runner.app[PIPELINE].drain()
        wall_s = time.perf_counter() - started
    finally:
        if proxy_runner is not None:
            await proxy_runner.cleanup()
        await fake_runner.cleanup()
    return _side_result(fake, replies, wall_s, records)


async def run_async(smoke: bool) -> dict[str, Any]:
    """Every scenario, without then with the governor; see ``run``."""
    started = time.perf_counter()
    results: list[ScenarioResult] = []
    time_scale = SMOKE_TIME_SCALE if smoke else TIME_SCALE
    for scenario in scenarios(smoke=smoke):
        without = await run_side(scenario, governed=False, time_scale=time_scale)
        with_governor = await run_side(scenario, governed=True, time_scale=time_scale)
        host = scenario.host()
        results.append(
            ScenarioResult(
                key=scenario.key,
                title=scenario.title,
                host=host,
                governor=scenario.governor_note,
                without=without,
                with_governor=with_governor,
            )
        )
    return {
        "simulated": True,
        "note": SIMULATION_NOTE,
        "time_scale": time_scale,
        "smoke": smoke,
        "wall_s": time.perf_counter() - started,
        "scenarios": results,
    }


def run(smoke: bool) -> dict[str, Any]:
    """Run the scenario benchmark; ``smoke`` uses fewer requests and finishes in a few seconds.

    The result is plain JSON-able data: per scenario the host, the governor's config, and for each
    side (``without``, ``with_governor``) the figures of ``SideResult``.
    """
    return asyncio.run(run_async(smoke))


def _fmt_ctx(values: Sequence[int]) -> str:
    """Loaded contexts, runs of one value collapsed: ``131072`` or ``4096,16384 x5``."""
    distinct = list(dict.fromkeys(values))
    if not distinct:
        return "-"
    text = ",".join(str(v) for v in distinct)
    return text if len(values) == len(distinct) else f"{text} ({len(values)} loads)"


def render(result: dict[str, Any]) -> str:
    """A plain aligned table, one row per scenario and side, and the statement that it is simulated."""
    header = [
        "scenario",
        "side",
        "reqs",
        "loads",
        "num_ctx loaded",
        "load s",
        "eval tok/s",
        "spilled",
        "truncated",
        "prompt tok",
        "evicted",
        "predicted",
        "wall s",
    ]
    rows: list[list[str]] = []
    for sc in result["scenarios"]:
        for label, side in (("without", sc["without"]), ("governed", sc["with_governor"])):
            rate = side["median_eval_tokens_per_s"]
            rows.append(
                [
                    f"{sc['key']} {sc['title']}" if label == "without" else "",
                    label,
                    str(side["requests"]),
                    str(side["loads"]),
                    _fmt_ctx(side["loaded_num_ctx"]),
                    f"{side['load_s']:.1f}",
                    "-" if rate is None else f"{rate:.1f}",
                    f"{side['spilled_requests']}/{side['requests']}",
                    str(side["truncated_prompts"]),
                    f"{side['prompt_tokens_evaluated']:,}",
                    str(side["evictions"]),
                    f"{side['predicted_right']}/{side['predicted']}" if side["predicted"] else "-",
                    f"{side['wall_s']:.2f}",
                ]
            )
    numeric = {2, 3, 5, 6, 7, 8, 9, 10, 11, 12}
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(header), *(line(r) for r in rows), ""]
    for sc in result["scenarios"]:
        out.append(f"{sc['key']}: {sc['host']}; governed with {sc['governor']}")
    out += [
        "",
        "load s: sum of the requests' load_duration (a request waiting on a load counts its wait, "
        "as Ollama reports it); eval tok/s: median of eval_count/eval_duration; spilled: requests "
        "that ran on a model partly in system RAM; truncated: prompts Ollama cut to num_ctx; "
        "prompt tok: prompt tokens Ollama evaluated (all requests); evicted: models Ollama unloaded "
        "to make room; predicted: governed requests where Ollama's scheduler did what the "
        "governor predicted (action and evicted models), of those with both; "
        f"wall s: real time of the run ({result['time_scale']:g}x compressed).",
        "",
        str(result["note"]),
    ]
    return "\n".join(out)
