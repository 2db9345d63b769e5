"""What governing the /v1 routes buys, as the maintainers will check it on a real Ollama 0.33.

Straight at Ollama an OpenAI-style request cannot name a context: it reloads a model another
client loaded at a larger one (recording reload_c) and cuts a long prompt to the default, or it
loads the server's default context for every parallel slot and spills. Through the governor the
same client, unchanged, keeps the loaded context and fits the GPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import openai
import pytest

from policies.memory import GIB
from proxy.config import parse_config
from proxy.facts.memory import NoGpuSource, NvmlSource
from proxy.keys import MEMORY
from tests.conftest import OllamaClients, StartFake, StartProxy, settled
from tests.fake_nvml import following
from tests.fake_ollama import gemma3_27b, gemma3_270m

LONG_PROMPT = "the quick brown fox jumps over the lazy dog " * 1000
"""~45,000 characters: ~11,000 tokens to the fake's tokenizer, well past a 4096 default."""

OpenAIClients = Callable[[str], openai.AsyncOpenAI]


@pytest.fixture
async def openai_client() -> AsyncIterator[OpenAIClients]:
    """Official async OpenAI clients for a host, closed after the test."""
    clients: list[openai.AsyncOpenAI] = []

    def make(host: str) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=host + "/v1", api_key="ollama", max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


class TestNativeThenOpenAI:
    async def test_the_loaded_context_is_kept_and_the_prompt_evaluated_whole(
        self,
        start_fake: StartFake,
        start_proxy: StartProxy,
        ollama_client: OllamaClients,
        openai_client: OpenAIClients,
    ) -> None:
        """An /api/chat loads the model at 16384; then an OpenAI client sends an ~11k-token
        prompt. Direct, Ollama reloads at its default 4096 and cuts the prompt; governed (no
        config file), the request gets the loaded 16384: no reload, every token evaluated."""
        results = {}
        for governed in (False, True):
            fake = await start_fake(models=[gemma3_270m()])
            url = fake.url  # type: ignore[attr-defined]
            if governed:
                url = (
                    await start_proxy(url, parse_config({}), memory_source=NoGpuSource("CPU-only host"))
                ).url
            await ollama_client(url).chat(
                model="gemma3-270m", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 16384}
            )
            reply = await openai_client(url).chat.completions.create(
                model="gemma3-270m", messages=[{"role": "user", "content": LONG_PROMPT}]
            )
            assert reply.usage is not None
            results[governed] = (fake.loads, reply.usage.prompt_tokens, fake.truncated)
        prompt_tokens = -(-len(LONG_PROMPT) // 4) + 1  # the fake's 4 characters a token, and BOS
        direct_loads, direct_prompt, direct_cut = results[False]
        assert direct_loads == [("gemma3-270m:latest", 16384), ("gemma3-270m:latest", 4096)]
        assert direct_prompt < 4096 and direct_cut == ["/v1/chat/completions"]
        assert results[True] == ([("gemma3-270m:latest", 16384)], prompt_tokens, [])


class TestParallelSlotsOverOpenAI:
    async def test_gemma3_27b_at_parallel_3_stays_on_a_24_gib_gpu(
        self, start_fake: StartFake, start_proxy: StartProxy, openai_client: OpenAIClients
    ) -> None:
        """OLLAMA_NUM_PARALLEL=3, three OpenAI clients at once: direct, the default 32768 x 3
        slots spills gemma3:27b to system RAM; governed (no rules, ``[ollama] num_parallel = 3``),
        it loads once at a context that fits and every request runs on the GPU."""

        async def three_at_once(url: str) -> None:
            await asyncio.gather(
                *(
                    openai_client(url).chat.completions.create(
                        model="gemma3:27b", messages=[{"role": "user", "content": f"question {i}"}]
                    )
                    for i in range(3)
                )
            )

        direct = await start_fake(vram_bytes=24 * GIB, num_parallel=3, models=[gemma3_27b()])
        await three_at_once(direct.url)  # type: ignore[attr-defined]
        assert direct.loads == [("gemma3:27b", 32768)]
        assert all(c.spilled for c in direct.completions) and direct.loaded()["gemma3:27b"].spilled

        fake = await start_fake(vram_bytes=24 * GIB, num_parallel=3, models=[gemma3_27b()])
        config = parse_config(
            {"ollama": {"num_parallel": 3, "ps_interval": "10s"}, "gpu": {"interval": "50ms"}}
        )
        proxy = await start_proxy(fake.url, config, memory_source=NvmlSource(nvml=following(fake)))  # type: ignore[attr-defined]
        await proxy.app[MEMORY].refresh()
        await three_at_once(proxy.url)
        await settled(proxy)
        [(model, num_ctx)] = fake.loads
        assert model == "gemma3:27b" and num_ctx < 32768
        assert [c.spilled for c in fake.completions] == [False] * 3
        state = fake.loaded()["gemma3:27b"]
        assert not state.spilled and state.size_vram == state.size
        assert {body["options"]["num_ctx"] for body in fake.bodies("/api/chat")} == {num_ctx}
