"""What Ollama's scheduler did for each request, read from /api/ps before and after, on the 0.33 fake."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from policies.memory import GIB
from proxy.facts.memory import NvmlSource
from proxy.govern.record import GovernedRequest
from proxy.keys import MEMORY
from tests.conftest import PASS_THROUGH, OllamaClients, StartFake, StartProxy, settled
from tests.fake_nvml import FakeGpu, FakeNvml, following
from tests.fake_ollama import gemma3_4b, gemma3_27b, llama3_1_8b, nomic_embed_text

KEEPS_THE_CLIENTS_CONTEXT = """
[[rules]]
models = ["*"]
policies = [{ use = "static", keep_alive = "5m" }]
"""
"""Governed (so the scheduler's action is predicted) without changing the context the client asks."""


Observe = Callable[..., Awaitable[list[GovernedRequest]]]


@pytest.fixture
def observe(start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients) -> Observe:
    """Send ``(model, num_ctx)`` requests (``endpoint`` generate or embed) through a governor (by
    default a pass-through one) in front of a fake made with ``fake``; return their records."""

    async def run(
        steps: list[tuple[str, int | None]],
        *,
        config: str = PASS_THROUGH,
        endpoint: str = "generate",
        **fake: Any,
    ) -> list[GovernedRequest]:
        upstream = await start_fake(**fake)
        recorded: list[GovernedRequest] = []
        proxy = await start_proxy(
            upstream.url,  # type: ignore[attr-defined]
            config,
            memory_source=NvmlSource(nvml=following(upstream)),
            sinks=[recorded.append],
        )
        client = ollama_client(proxy.url)
        for model, num_ctx in steps:
            options = None if num_ctx is None else {"num_ctx": num_ctx}
            if endpoint == "embed":
                await client.embed(model=model, input="a question", options=options)
            else:
                await client.generate(model=model, prompt="hi", options=options)
            await settled(proxy)
        return recorded

    return run


class TestObservedAction:
    async def test_load_reuse_reload(self, observe: Observe) -> None:
        """A first load, the same context again (nothing loads), another context (a reload)."""
        records = await observe(
            [("gemma3:4b", 4096), ("gemma3:4b", 4096), ("gemma3:4b", 8192)],
            vram_bytes=24 * GIB,
            models=[gemma3_4b()],
        )
        assert [(r.observed_action, r.observed_evictions) for r in records] == [
            ("load", ()),
            ("reuse", ()),
            ("reload", ()),
        ]

    async def test_a_model_that_makes_room_names_the_evicted_one(self, observe: Observe) -> None:
        """On 8 GiB a second model does not fit beside the first: Ollama unloads it first."""
        records = await observe(
            [("gemma3:4b", 4096), ("llama3.1:8b", 8192)],
            vram_bytes=8 * GIB,
            models=[gemma3_4b(), llama3_1_8b()],
        )
        assert records[-1].observed_action == "evict"
        assert records[-1].observed_evictions == ("gemma3:4b",)

    async def test_a_load_that_does_not_fit_spills(self, observe: Observe) -> None:
        """gemma3:27b on 8 GiB: part of it runs from system RAM."""
        records = await observe(
            [("gemma3:27b", 4096)],
            vram_bytes=8 * GIB,
            models=[gemma3_27b()],
        )
        assert (records[0].observed_action, records[0].spilled) == ("spill", True)


class TestPredictedAction:
    """Each governed request carries what the scheduler model predicted before it went out; on the
    fake, which follows 0.33's scheduler, the prediction holds for every kind of action."""

    async def test_load_reuse_reload_are_predicted(self, observe: Observe) -> None:
        records = await observe(
            [("gemma3:4b", 4096), ("gemma3:4b", 4096), ("gemma3:4b", 8192)],
            config=KEEPS_THE_CLIENTS_CONTEXT,
            vram_bytes=24 * GIB,
            models=[gemma3_4b()],
        )
        assert [r.predicted_action for r in records] == ["load", "reuse", "reload"]
        assert [r.prediction_held for r in records] == [True, True, True]

    async def test_an_eviction_is_predicted_with_the_model_it_unloads(self, observe: Observe) -> None:
        records = await observe(
            [("gemma3:4b", 4096), ("llama3.1:8b", 8192)],
            config=KEEPS_THE_CLIENTS_CONTEXT,
            vram_bytes=8 * GIB,
            models=[gemma3_4b(), llama3_1_8b()],
        )
        last = records[-1]
        assert (last.predicted_action, last.predicted_evictions) == ("evict", ("gemma3:4b",))
        assert last.prediction_held is True

    async def test_a_spill_is_predicted(self, observe: Observe) -> None:
        records = await observe(
            [("gemma3:27b", 4096)],
            config=KEEPS_THE_CLIENTS_CONTEXT,
            vram_bytes=8 * GIB,
            models=[gemma3_27b()],
        )
        assert (records[0].predicted_action, records[0].prediction_held) == ("spill", True)

    async def test_the_prediction_follows_each_memory_sample(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """Memory another process takes between two requests shows in the next prediction:
        gemma3:4b and llama3.1:8b fit together on 24 GiB, but once 18 GiB of it are taken (by
        gemma3:4b and another process), llama3.1:8b only loads after gemma3:4b is unloaded."""
        upstream = await start_fake(vram_bytes=24 * GIB, models=[gemma3_4b(), llama3_1_8b()])
        gpu = FakeGpu("GPU-0", "NVIDIA GeForce RTX 4090", 24 * GIB, 0)
        recorded: list[GovernedRequest] = []
        proxy = await start_proxy(
            upstream.url,  # type: ignore[attr-defined]
            KEEPS_THE_CLIENTS_CONTEXT,
            memory_source=NvmlSource(nvml=FakeNvml([gpu])),
            sinks=[recorded.append],
        )
        client = ollama_client(proxy.url)
        sampler = proxy.app[MEMORY]

        async def send(model: str, used_bytes: int) -> str | None:
            gpu.used_bytes = used_bytes
            await sampler.refresh()
            await client.generate(model=model, prompt="hi", options={"num_ctx": 4096})
            await settled(proxy)
            return recorded[-1].predicted_action

        assert await send("gemma3:4b", 0) == "load"
        assert await send("llama3.1:8b", 18 * GIB) == "evict"
        assert recorded[-1].predicted_evictions == ("gemma3:4b",)

    async def test_a_pass_through_request_predicts_nothing(self, observe: Observe) -> None:
        """No policy ran, so no facts were gathered for it: nothing is predicted, nothing is slowed."""
        records = await observe(
            [("gemma3:4b", 4096)],
            vram_bytes=24 * GIB,
            models=[gemma3_4b()],
        )
        assert (records[0].predicted_action, records[0].observed_action) == (None, "load")

    async def test_an_embedding_models_first_load_is_a_load(self, observe: Observe) -> None:
        """An embedding answer has no done_reason; its 200 still completes the load it caused."""
        recorded = await observe(
            [("nomic-embed-text", None)] * 2,
            config=KEEPS_THE_CLIENTS_CONTEXT,
            endpoint="embed",
            vram_bytes=8 * GIB,
            models=[nomic_embed_text()],
        )
        assert [(r.predicted_action, r.observed_action, r.reloaded) for r in recorded] == [
            ("load", "load", True),
            ("reuse", "reuse", False),
        ]
