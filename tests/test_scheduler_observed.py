"""What Ollama's scheduler did for each request, read from /api/ps before and after, on the 0.33 fake."""

from __future__ import annotations

from typing import Any

from policies.memory import GIB
from proxy.facts.memory import NvmlSource
from proxy.govern.record import GovernedRequest
from tests.conftest import OllamaClients, StartFake, StartProxy, settled
from tests.fake_nvml import following
from tests.fake_ollama import gemma3_4b, gemma3_27b, llama3_1_8b


async def observe(
    start_fake: StartFake,
    start_proxy: StartProxy,
    ollama_client: OllamaClients,
    steps: list[tuple[str, int]],
    **fake: Any,
) -> list[GovernedRequest]:
    """Send ``(model, num_ctx)`` requests through a pass-through governor; return their records."""
    upstream = await start_fake(**fake)
    recorded: list[GovernedRequest] = []
    proxy = await start_proxy(
        upstream.url,  # type: ignore[attr-defined]
        memory_source=NvmlSource(nvml=following(upstream)),
        sinks=[recorded.append],
    )
    client = ollama_client(proxy.url)
    for model, num_ctx in steps:
        await client.generate(model=model, prompt="hi", options={"num_ctx": num_ctx})
        await settled(proxy)
    return recorded


class TestObservedAction:
    async def test_load_reuse_reload(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """A first load, the same context again (nothing loads), another context (a reload)."""
        records = await observe(
            start_fake,
            start_proxy,
            ollama_client,
            [("gemma3:4b", 4096), ("gemma3:4b", 4096), ("gemma3:4b", 8192)],
            vram_bytes=24 * GIB,
            models=[gemma3_4b()],
        )
        assert [(r.observed_action, r.observed_evictions) for r in records] == [
            ("load", ()),
            ("reuse", ()),
            ("reload", ()),
        ]

    async def test_a_model_that_makes_room_names_the_evicted_one(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """On 8 GiB a second model does not fit beside the first: Ollama unloads it first."""
        records = await observe(
            start_fake,
            start_proxy,
            ollama_client,
            [("gemma3:4b", 4096), ("llama3.1:8b", 8192)],
            vram_bytes=8 * GIB,
            models=[gemma3_4b(), llama3_1_8b()],
        )
        assert records[-1].observed_action == "evict"
        assert records[-1].observed_evictions == ("gemma3:4b",)

    async def test_a_load_that_does_not_fit_spills(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """gemma3:27b on 8 GiB: part of it runs from system RAM."""
        records = await observe(
            start_fake,
            start_proxy,
            ollama_client,
            [("gemma3:27b", 4096)],
            vram_bytes=8 * GIB,
            models=[gemma3_27b()],
        )
        assert (records[0].observed_action, records[0].spilled) == ("spill", True)
