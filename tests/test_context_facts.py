"""The facts each request's Context is built from follow Ollama between requests: what it holds, at
which keep_alive, and what was learnt of it (the Context factory derives them once per change)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from policies.context import Context
from policies.decision import Decision
from policies.memory import GIB
from proxy.facts.memory import NvmlSource
from tests.conftest import OllamaClients, StartFake, StartProxy, settled
from tests.fake_nvml import FakeGpu, FakeNvml
from tests.fake_ollama import gemma3_4b, llama3_1_8b

SEEN: list[Context] = []
"""Every Context ``spy`` was given, in order."""


def spy(ctx: Context, decision: Decision) -> Decision:
    """Keeps the Context and changes nothing."""
    SEEN.append(ctx)
    return decision


STEADY_GPU = FakeNvml([FakeGpu("GPU-0", "NVIDIA GeForce RTX 4090", 24 * GIB, 0)])
"""Memory that never changes: what the Context shows of Ollama comes from ``/api/ps`` alone."""


@web.middleware
async def no_show(request: web.Request, handler: Any) -> web.StreamResponse:
    """``/api/show`` answers 500: the governor learns no facts, so no calibration either."""
    if request.path == "/api/show":
        return web.json_response({"error": "boom"}, status=500)
    return await handler(request)  # type: ignore[no-any-return]


SPIED = '[[rules]]\nmodels = ["*"]\npolicies = [{ use = "tests.test_context_facts:spy" }]\n'


def residents(ctx: Context) -> list[tuple[str, float | None]]:
    return sorted((resident.name, resident.keep_alive_s) for resident in ctx.residents)


async def spied(
    start_fake: StartFake,
    start_proxy: StartProxy,
    ollama_client: OllamaClients,
    *,
    show: bool = True,
) -> Callable[[str, str | None], Awaitable[None]]:
    """A governor that keeps each Context, in front of a fake Ollama on a steady 24 GiB GPU (whose
    ``/api/show`` fails unless ``show``); the returned function sends one generate request and
    waits until its result is recorded."""
    SEEN.clear()
    fake = await start_fake(
        vram_bytes=24 * GIB, models=[gemma3_4b(), llama3_1_8b()], middlewares=() if show else (no_show,)
    )
    proxy = await start_proxy(
        fake.url,  # type: ignore[attr-defined]
        SPIED,
        memory_source=NvmlSource(nvml=STEADY_GPU),
    )
    client = ollama_client(proxy.url)

    async def generate(model: str, keep_alive: str | None) -> None:
        await client.generate(model=model, prompt="hi", keep_alive=keep_alive, options={"num_ctx": 4096})
        await settled(proxy)

    return generate


async def test_a_load_is_in_the_next_context(
    start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
) -> None:
    """What Ollama loads shows in the next request's Context, however many requests saw it before."""
    generate = await spied(start_fake, start_proxy, ollama_client)
    for model in ("gemma3:4b", "gemma3:4b", "gemma3:4b", "llama3.1:8b", "gemma3:4b"):
        await generate(model, None)
    assert [[name for name, _ in residents(ctx)] for ctx in SEEN] == [
        [],  # nothing loaded yet
        ["gemma3:4b"],
        ["gemma3:4b"],
        ["gemma3:4b"],
        ["gemma3:4b", "llama3.1:8b"],
    ]
    assert [ctx.loaded.context_length if ctx.loaded else None for ctx in SEEN] == [
        None,
        4096,
        4096,
        None,
        4096,
    ]
    assert len(SEEN[-1].all_loaded) == 2


async def test_a_load_shows_without_any_facts_of_the_model(
    start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
) -> None:
    """With ``/api/show`` failing nothing is learnt of the model, and the load alone changes what
    the next Context shows."""
    generate = await spied(start_fake, start_proxy, ollama_client, show=False)
    for _ in range(3):
        await generate("gemma3:4b", None)
    assert [ctx.model for ctx in SEEN] == [None, None, None]
    assert [ctx.loaded.context_length if ctx.loaded else None for ctx in SEEN] == [None, 4096, 4096]


async def test_the_keep_alive_sent_is_in_the_next_context(
    start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
) -> None:
    """The keep_alive the governor last sent a runner is the one its resident shows next."""
    generate = await spied(start_fake, start_proxy, ollama_client)
    for keep_alive in ("5m", "5m", "10m", "10m"):
        await generate("gemma3:4b", keep_alive)
    assert [residents(ctx) for ctx in SEEN] == [
        [],
        [("gemma3:4b", 300.0)],
        [("gemma3:4b", 300.0)],  # 10m goes out with this request
        [("gemma3:4b", 600.0)],
    ]
