"""The scheduler model against the fake Ollama's scheduler, step by step over a set of scenarios.

The fake (tests/fakeollama/scheduler.py) implements server/sched.go on its own and imports nothing
from ``policies`` or ``proxy``, so agreement here is evidence that both read the source the same
way, not a tautology. The two footprints differ a little (the fake's compute buffer is its own
fit, and it leaves out the attention scores without flash attention), so the scenarios keep clear
of the edge where one of them would spill and the other not. Before each request the model predicts from the fake's state (its runners,
their keep_alives and blobs, its free VRAM); then the request runs and what the fake did (its load
events) is compared: the action, the runners it unloaded in order, the batch and the context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from policies.context import LoadedModel
from policies.model import ModelFacts
from policies.scheduler import Action, Budget, Candidate, OllamaServer, Prediction, Resident, predict
from tests.conftest import StartFake
from tests.fake_ollama import (
    FOREVER_NS,
    FakeModel,
    FakeOllama,
    gemma3_4b,
    gemma3_27b,
    gemma3_270m,
    gemma3_270m_b,
    llama3_1_8b,
    llama_tiny,
    nomic_embed_text,
)
from tests.fakeollama.management import BLOB_DIR
from tests.fakeollama.wire import parse_go_duration

V033 = "0.33.0-rc2"
GiB = 1 << 30


@dataclass(frozen=True)
class Step:
    """One request: a model, its num_ctx (None: the server's automatic default) and keep_alive."""

    model: str
    num_ctx: int | None = None
    keep_alive: str | None = None
    embed: bool = False


@dataclass(frozen=True)
class Scenario:
    models: tuple[FakeModel, ...]
    steps: tuple[Step, ...]
    options: dict[str, Any] = field(default_factory=dict)


SCENARIOS = {
    "estimate-evicts-4b-for-27b": Scenario(
        (gemma3_27b(), gemma3_4b()),
        (Step("gemma3:4b", 8192), Step("gemma3:27b", 8192), Step("gemma3:4b", 8192)),
        {"vram_bytes": 24 * GiB},
    ),
    "small-models-side-by-side": Scenario(
        (gemma3_270m(), llama_tiny()),
        (Step("gemma3-270m", 8192), Step("llama-tiny", 2048), Step("gemma3-270m", 8192)),
        {"vram_bytes": 24 * GiB},
    ),
    "keep-alive-order": Scenario(
        (gemma3_270m(), llama_tiny(), llama3_1_8b()),
        (
            Step("gemma3-270m", 2048, "10m"),
            Step("llama-tiny", 2048, "1m"),
            Step("llama-tiny", 2048),
            Step("llama3.1:8b", 2048),
        ),
        {"vram_bytes": 24 * GiB, "max_loaded_models": 2},
    ),
    "blob-order": Scenario(
        (gemma3_270m(), llama_tiny(), llama3_1_8b()),
        (Step("llama-tiny", 2048), Step("gemma3-270m", 2048), Step("llama3.1:8b", 2048)),
        {"vram_bytes": 24 * GiB, "max_loaded_models": 2},
    ),
    "forever-stays": Scenario(
        (gemma3_270m(), llama_tiny(), llama3_1_8b()),
        (Step("gemma3-270m", 2048, "-1m"), Step("llama-tiny", 2048, "24h"), Step("llama3.1:8b", 2048)),
        {"vram_bytes": 24 * GiB, "max_loaded_models": 2},
    ),
    "three-per-gpu": Scenario(
        (gemma3_270m(), llama_tiny(), llama3_1_8b(), gemma3_4b()),
        tuple(Step(name, 2048) for name in ("gemma3-270m", "llama-tiny", "llama3.1:8b", "gemma3:4b")),
        {"vram_bytes": 48 * GiB},
    ),
    "spill-alone": Scenario((gemma3_27b(),), (Step("gemma3:27b", 131072),), {"vram_bytes": 24 * GiB}),
    "evict-then-spill": Scenario(
        (gemma3_27b(), gemma3_4b()),
        (Step("gemma3:4b", 8192), Step("gemma3:27b", 131072)),
        {"vram_bytes": 24 * GiB},
    ),
    "reload-and-back": Scenario(
        (gemma3_4b(), gemma3_270m()),
        (
            Step("gemma3-270m", 4096),
            Step("gemma3:4b", 2048),
            Step("gemma3:4b", 32768),
            Step("gemma3:4b", 32768),
        ),
        {"vram_bytes": 24 * GiB},
    ),
    "shared-blob": Scenario(
        (gemma3_270m(), gemma3_270m_b()),
        (Step("gemma3-270m", 8192), Step("gemma3-270m-b", 8192), Step("gemma3-270m-b", 4096)),
        {"vram_bytes": 24 * GiB},
    ),
    "automatic-context": Scenario(
        (gemma3_4b(),),
        (Step("gemma3:4b"), Step("gemma3:4b"), Step("gemma3:4b", 32768), Step("gemma3:4b", 8192)),
        {"vram_bytes": 24 * GiB},
    ),
    "three-slots-q8": Scenario(
        (gemma3_27b(), gemma3_4b(), gemma3_270m()),
        (Step("gemma3-270m", 8192), Step("gemma3:4b", 8192), Step("gemma3:27b", 4096)),
        {"vram_bytes": 24 * GiB, "num_parallel": 3, "kv_cache_type": "q8_0"},
    ),
    "small-card-batch-steps-down": Scenario(
        (llama3_1_8b(), llama_tiny()),
        (Step("llama-tiny", 4096), Step("llama3.1:8b", 32768), Step("llama3.1:8b", 65536)),
        {"vram_bytes": 12 * GiB},
    ),
    "flash-attention-off": Scenario(  # batch 256 on a CUDA GPU with at most 8 GiB free
        (llama3_1_8b(), llama_tiny()),
        (Step("llama-tiny", 8192), Step("llama3.1:8b", 8192), Step("llama3.1:8b", 4096)),
        {"vram_bytes": 8 * GiB, "flash_attention": False},
    ),
    "embedding-beside-chat": Scenario(
        (gemma3_4b(), nomic_embed_text()),
        (Step("gemma3:4b", 16384), Step("nomic-embed-text", 8192, embed=True), Step("gemma3:4b", 16384)),
        {"vram_bytes": 8 * GiB},
    ),
    "cpu-only-cap": Scenario(
        (gemma3_270m(), llama_tiny(), llama3_1_8b(), gemma3_4b()),
        tuple(Step(name, 2048) for name in ("gemma3-270m", "llama-tiny", "llama3.1:8b", "gemma3:4b")),
    ),
}


async def facts_of(http: aiohttp.ClientSession, url: str, name: str) -> ModelFacts:
    """The model's facts from the fake's /api/show (verbose) and its /api/tags row, as the governor reads them."""
    async with http.get(url + "/api/tags") as response:
        tags = await response.json()
    entry = next(m for m in tags["models"] if m["name"] in (name, f"{name}:latest"))
    async with http.post(url + "/api/show", json={"model": name, "verbose": True}) as response:
        show = await response.json()
    return ModelFacts.from_show(name, show, entry)


def keep_alive_s(ns: int) -> float:
    return math.inf if ns >= FOREVER_NS else ns / 1e9


def fake_state(fake: FakeOllama, facts: dict[str, ModelFacts]) -> tuple[tuple[Resident, ...], Budget]:
    """The fake's runners and memory as the scheduler model takes them."""
    residents = tuple(
        Resident(
            loaded=LoadedModel(
                name=state.name,
                digest=state.model.digest,
                size_bytes=state.size,
                size_vram_bytes=state.size_vram,
                context_length=state.num_ctx,
                expires_at=None,
                spilled=state.spilled,
            ),
            facts=facts[state.model.full_name],
            keep_alive_s=keep_alive_s(state.keep_alive_ns),
            busy=state.refcount > 0,
            model_path=f"{BLOB_DIR}/sha256-{state.key}",
            num_ctx_auto=state.num_ctx_auto,
        )
        for state in fake.loaded().values()
    )
    if fake.vram_bytes is None:
        return residents, Budget(free_bytes=None, kind="system", gpu_count=0)
    return residents, Budget(free_bytes=fake.free_vram_bytes(), total_bytes=fake.vram_bytes)


def server_of(fake: FakeOllama) -> OllamaServer:
    return OllamaServer(
        num_parallel=fake.num_parallel,
        kv_cache_type=fake.kv_cache_type,
        max_loaded_models=fake.max_loaded_models,
        flash_attention="on" if fake.flash_attention else "off",
        keep_alive_s=keep_alive_s(fake.default_keep_alive_ns),
        fit_target_bytes=fake.fit_target_bytes,
    )


def what_the_fake_did(fake: FakeOllama, events_before: int) -> tuple[Action, tuple[str, ...], int, int]:
    """(action, evicted names, num_ctx, num_batch) from the fake's load events (none: a reuse)."""
    new = fake.load_events[events_before:]
    if not new:
        return "reuse", (), 0, 0
    event = new[-1]
    action: Action
    if event.spilled:
        action = "spill"
    elif event.evicted:
        action = "evict"
    elif event.reason == "reload":
        action = "reload"
    else:
        action = "load"
    return action, event.evicted, event.num_ctx, event.num_batch


async def send(http: aiohttp.ClientSession, url: str, step: Step) -> None:
    body: dict[str, Any] = {"model": step.model}
    if step.num_ctx is not None:
        body["options"] = {"num_ctx": step.num_ctx}
    if step.keep_alive is not None:
        body["keep_alive"] = step.keep_alive
    path = "/api/embed" if step.embed else "/api/generate"
    body.update({"input": "hello"} if step.embed else {"prompt": "hi", "stream": False})
    async with http.post(url + path, json=body) as response:
        assert response.status == 200, await response.text()


async def run(
    start_fake: StartFake, http: aiohttp.ClientSession, scenario: Scenario
) -> list[tuple[Prediction, tuple[Action, tuple[str, ...], int, int], str]]:
    """Play the scenario on a fresh fake: per step, the prediction, what the fake did, and a label."""
    fake = await start_fake(version=V033, models=list(scenario.models), **scenario.options)
    url: str = fake.url  # type: ignore[attr-defined]
    facts = {model.full_name: await facts_of(http, url, model.name) for model in scenario.models}
    by_name = {model.name: model for model in scenario.models}
    server = server_of(fake)
    results = []
    for index, step in enumerate(scenario.steps):
        model = by_name[step.model]
        residents, budget = fake_state(fake, facts)
        candidate = Candidate(
            facts[model.full_name],
            fake.default_num_ctx if step.num_ctx is None else step.num_ctx,
            num_ctx_auto=step.num_ctx is None,
            keep_alive_s=None
            if step.keep_alive is None
            else keep_alive_s(parse_go_duration(step.keep_alive)),
            model_path=f"{BLOB_DIR}/sha256-{model.blob}",
        )
        predicted = predict(candidate, residents, budget, server)
        before = len(fake.load_events)
        await send(http, url, step)
        label = f"step {index + 1} ({step.model} at {step.num_ctx}): {predicted.reason}"
        results.append((predicted, what_the_fake_did(fake, before), label))
    return results


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_each_step_does_what_the_model_predicts(
    start_fake: StartFake, http: aiohttp.ClientSession, scenario: Scenario
) -> None:
    """Before every request the model names the fake's action, evictions in order, context and batch."""
    for predicted, (action, evicted, num_ctx, num_batch), label in await run(start_fake, http, scenario):
        assert (predicted.action, predicted.evicted_names) == (action, evicted), label
        if action != "reuse":
            assert (predicted.num_ctx, predicted.num_batch) == (num_ctx, num_batch), label


async def test_the_scenarios_cover_every_action_and_cause(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    """Together the scenarios make the fake reuse, reload, load, evict (for both causes) and spill."""
    actions: set[str] = set()
    causes: set[str] = set()
    for scenario in SCENARIOS.values():
        for predicted, (action, _, _, _), _ in await run(start_fake, http, scenario):
            actions.add(action)
            causes.update(eviction.cause for eviction in predicted.evicted)
    assert actions == {"reuse", "reload", "load", "evict", "spill"}
    assert causes == {"max_loaded_models", "preflight"}
