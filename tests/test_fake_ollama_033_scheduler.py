"""The 0.33 fake's scheduler on a simulated GPU: spill, eviction by Ollama's estimate, order, OOM.

Why: a governor's decisions only help if the fake evicts, spills and retries where Ollama 0.33
does (server/sched.go), with its own "true" footprint left independent of the proxy's estimator.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.conftest import OllamaClients, StartFake
from tests.fake_ollama import (
    Eviction,
    FakeOllama,
    gemma3_4b,
    gemma3_27b,
    gemma3_270m,
    llama3_1_8b,
    llama_tiny,
)

V033 = "0.33.0-rc2"
GiB = 1 << 30


async def generate(fake: FakeOllama, client: OllamaClients, model: str, **kwargs: Any) -> None:
    await client(fake.url).generate(model=model, prompt="hi", **kwargs)  # type: ignore[attr-defined]


class TestPlacement:
    async def test_the_first_model_loads_what_fits_and_spills_the_rest(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """gemma3:27b at 131072 on 24 GiB: llama.cpp keeps 1 GiB free and puts the rest in RAM."""
        fake = await start_fake(version=V033, models=[gemma3_27b()], vram_bytes=24 * GiB)
        await generate(fake, ollama_client, "gemma3:27b", options={"num_ctx": 131072})
        state = fake.loaded()["gemma3:27b"]
        assert state.spilled and state.footprint_vram_bytes == 23 * GiB
        assert state.size_vram < state.size and fake.free_vram_bytes() == 1 * GiB
        assert fake.load_events[-1].spilled and fake.evictions == []

    async def test_the_fit_target_spills_a_model_that_would_just_fit(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """A footprint within 1 GiB of the free VRAM spills; with fit_target_bytes 0 it fits."""
        size = FakeOllama(version=V033, vram_bytes=24 * GiB).size_for(llama3_1_8b(), 8192)
        for target, spilled in ((None, True), (0, False)):
            fake = await start_fake(
                version=V033, models=[llama3_1_8b()], vram_bytes=size + GiB // 2, fit_target_bytes=target
            )
            await generate(fake, ollama_client, "llama3.1:8b", options={"num_ctx": 8192})
            assert fake.loaded()["llama3.1:8b"].spilled is spilled

    async def test_ps_size_leaves_out_the_global_kv_of_sliding_window_models(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """On the GPU /api/ps says size == size_vram, both short of the true footprint by the global KV."""
        fake = await start_fake(version=V033, models=[gemma3_4b()], vram_bytes=24 * GiB)
        await generate(fake, ollama_client, "gemma3:4b", options={"num_ctx": 8192})
        (entry,) = (await ollama_client(fake.url).ps()).models  # type: ignore[attr-defined]
        plan = fake.plan(gemma3_4b(), 8192)
        assert entry.size == entry.size_vram == plan.footprint.total - plan.footprint.kv_full
        assert fake.free_vram_bytes() == 24 * GiB - plan.footprint.total

    async def test_num_gpu_zero_keeps_a_model_off_the_gpu(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """num_gpu 0 (-ngl 0) loads into system RAM: size_vram 0 even on a GPU host."""
        fake = await start_fake(version=V033, models=[llama_tiny()], vram_bytes=24 * GiB)
        await generate(fake, ollama_client, "llama-tiny", options={"num_gpu": 0})
        assert fake.loaded()["llama-tiny:latest"].size_vram == 0 and fake.free_vram_bytes() == 24 * GiB

    def test_the_automatic_batch_steps_down_without_headroom(self) -> None:
        """num_batch follows the context tier, stepped down while the estimate leaves no headroom."""
        roomy = FakeOllama(version=V033, vram_bytes=48 * GiB)
        tight = FakeOllama(version=V033, vram_bytes=8 * GiB)
        assert [roomy.plan(llama3_1_8b(), c).num_batch for c in (4096, 8192, 32768, 65536)] == [
            512,
            1024,
            1024,
            2048,
        ]
        assert tight.plan(llama3_1_8b(), 32768).num_batch == 512
        no_fa = FakeOllama(version=V033, vram_bytes=8 * GiB, flash_attention=False)
        assert [no_fa.plan(llama3_1_8b(), c).num_batch for c in (4096, 8192)] == [512, 256]


class TestEviction:
    async def test_ollamas_estimate_evicts_where_the_true_footprint_would_fit(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """gemma3:27b at 8192 beside gemma3:4b: the estimate (no SWA, head_dim 168) needs > 80% of free."""
        fake = await start_fake(version=V033, models=[gemma3_27b(), gemma3_4b()], vram_bytes=24 * GiB)
        await generate(fake, ollama_client, "gemma3:4b", options={"num_ctx": 8192})
        free = fake.free_vram_bytes()
        assert free is not None and fake.size_for(gemma3_27b(), 8192) < free - GiB  # it would fit
        await generate(fake, ollama_client, "gemma3:27b", options={"num_ctx": 8192})
        predicted = fake.plan(gemma3_27b(), 8192, available=free).predicted_load
        assert fake.evictions == [Eviction("gemma3:4b", "gemma3:27b", "fit", predicted, free)]
        assert set(fake.loaded()) == {"gemma3:27b"} and fake.load_events[-1].evicted == ("gemma3:4b",)

    async def test_small_models_stay_side_by_side(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """Two models whose estimate fits within 80% of the free VRAM are both kept."""
        fake = await start_fake(version=V033, models=[gemma3_270m(), llama_tiny()], vram_bytes=24 * GiB)
        await generate(fake, ollama_client, "gemma3-270m")
        await generate(fake, ollama_client, "llama-tiny")
        assert set(fake.loaded()) == {"gemma3-270m:latest", "llama-tiny:latest"} and fake.evictions == []

    async def test_the_shortest_keep_alive_goes_first(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """findRunnerToUnload: the runner with the shortest keep_alive is evicted, not the oldest."""
        models = [gemma3_270m(), llama_tiny(), llama3_1_8b()]
        fake = await start_fake(version=V033, models=models, max_loaded_models=2)
        await generate(fake, ollama_client, "gemma3-270m", keep_alive="10m")
        await generate(fake, ollama_client, "llama-tiny", keep_alive="1m")
        await generate(fake, ollama_client, "llama-tiny")  # the most recently used: LRU would keep it
        await generate(fake, ollama_client, "llama3.1:8b")
        assert [(e.name, e.reason) for e in fake.evictions] == [("llama-tiny:latest", "max_loaded_models")]

    async def test_equal_keep_alives_go_by_blob_path(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """With the same keep_alive the runner whose GGUF path sorts first is evicted."""
        models = [gemma3_270m(), llama_tiny(), llama3_1_8b()]
        fake = await start_fake(version=V033, models=models, max_loaded_models=2)
        first, second = sorted(models[:2], key=lambda m: m.blob)
        await generate(fake, ollama_client, second.name)
        await generate(fake, ollama_client, first.name)  # the most recently used: LRU would keep it
        await generate(fake, ollama_client, "llama3.1:8b")
        assert [e.name for e in fake.evictions] == [first.full_name]

    async def test_an_idle_runner_goes_before_a_busy_one(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """A busy runner is passed over while an idle one can be evicted."""
        models = [gemma3_270m(), llama_tiny(), llama3_1_8b()]
        fake = await start_fake(version=V033, models=models, max_loaded_models=2)
        await generate(fake, ollama_client, "gemma3-270m", keep_alive="10m")
        fake.hold = asyncio.Event()
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                fake.url + "/api/generate",
                json={  # type: ignore[attr-defined]
                    "model": "llama-tiny",
                    "prompt": "hi",
                    "keep_alive": "1m",
                },
            )
            await resp.content.readline()  # llama-tiny is now busy streaming
            await generate(fake, ollama_client, "llama3.1:8b")
            fake.hold.set()
            await resp.read()
        assert [e.name for e in fake.evictions] == ["gemma3-270m:latest"]

    async def test_at_most_three_models_by_default(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """OLLAMA_MAX_LOADED_MODELS 0: three runners per GPU (and three on CPU)."""
        names = ["gemma3-270m", "llama-tiny", "llama3.1:8b", "gemma3:4b"]
        fake = await start_fake(
            version=V033, models=[gemma3_270m(), llama_tiny(), llama3_1_8b(), gemma3_4b()]
        )
        for name in names:
            await generate(fake, ollama_client, name)
        assert len(fake.loaded()) == 3 and [e.reason for e in fake.evictions] == ["max_loaded_models"]


class TestLoadFailures:
    async def test_an_automatic_context_is_reduced_once(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """A failed load at the automatic 32768 retries at 4096 (sched.go nextLowerAutoNumCtx)."""
        fake = await start_fake(version=V033, models=[llama3_1_8b()], vram_bytes=24 * GiB)
        fake.fail_next_loads = 1
        await generate(fake, ollama_client, "llama3.1:8b")
        assert fake.loads == [("llama3.1:8b", 4096)] and fake.load_events[-1].reason == "oom_retry"

    async def test_an_explicit_context_evicts_everything_and_retries_once(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """An explicit num_ctx keeps its value: every other runner is unloaded, then one retry."""
        fake = await start_fake(version=V033, models=[gemma3_270m(), llama_tiny()], vram_bytes=24 * GiB)
        await generate(fake, ollama_client, "gemma3-270m")
        fake.fail_next_loads = 1
        await generate(fake, ollama_client, "llama-tiny", options={"num_ctx": 8192})
        assert [(e.name, e.reason) for e in fake.evictions] == [("gemma3-270m:latest", "oom")]
        assert fake.loads[-1] == ("llama-tiny:latest", 8192) and set(fake.loaded()) == {"llama-tiny:latest"}

    async def test_a_second_failure_is_a_500(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """Alone, or after its one retry, a failed load answers 500 with llama-server's error."""
        fake = await start_fake(version=V033, models=[llama_tiny()])
        fake.fail_next_loads = 1
        async with http.post(
            fake.url + "/api/generate",
            json={  # type: ignore[attr-defined]
                "model": "llama-tiny",
                "prompt": "hi",
                "options": {"num_ctx": 2048},
            },
        ) as resp:
            assert resp.status == 500 and "out-of-memory" in json.loads(await resp.text())["error"]
        assert fake.loads == []

    async def test_a_spill_that_does_not_fit_in_ram_fails(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """With ram_bytes set, the part that spills must fit in free system RAM."""
        fake = await start_fake(version=V033, models=[gemma3_27b()], vram_bytes=24 * GiB, ram_bytes=4 * GiB)
        async with http.post(
            fake.url + "/api/generate",
            json={  # type: ignore[attr-defined]
                "model": "gemma3:27b",
                "prompt": "hi",
                "options": {"num_ctx": 131072},
            },
        ) as resp:
            assert resp.status == 500
        assert fake.loaded() == {}
