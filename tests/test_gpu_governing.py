"""GPU-aware governing end to end: a fake Ollama that simulates VRAM, the NVML code path fed by
an injected module, and the built-in policies deciding through the real proxy."""

from __future__ import annotations

import asyncio
from typing import Any

import ollama
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from policies.memory import GIB, estimate_bytes
from proxy.facts.memory import NvmlSource
from proxy.keys import FACTS, MEMORY
from tests.conftest import OllamaClients, Running, StartFake, StartProxy, eventually, settled, start_app
from tests.fake_nvml import FakeLibraryNotFound, FakeNvml, following
from tests.fake_ollama import FakeOllama, gemma3_4b, gemma3_27b

GPU_BYTES = 24 * GIB


def config(policies: str, *, parallel: int = 1) -> str:
    return f"""
        [ollama]
        num_parallel = {parallel}
        ps_interval = "10s"

        [gpu]
        interval = "50ms"

        [[rules]]
        models = ["*"]
        policies = [{policies}]
    """


async def governed_gpu(
    start_fake: StartFake, start_proxy: StartProxy, policies: str, *, parallel: int = 1, **fake_options: Any
) -> tuple[FakeOllama, Running]:
    fake_options.setdefault("models", [gemma3_27b(), gemma3_4b()])
    fake = await start_fake(vram_bytes=GPU_BYTES, num_parallel=parallel, **fake_options)
    proxy = await start_proxy(
        fake.url,
        config(policies, parallel=parallel),
        memory_source=NvmlSource(nvml=following(fake)),  # type: ignore[attr-defined]
    )
    await proxy.app[MEMORY].refresh()
    return fake, proxy


def loaded_state(fake: FakeOllama, name: str) -> Any:
    return fake.loaded()[name]


class TestSeedScenario:
    @pytest.mark.parametrize("parallel", [1, 3])
    async def test_131072_on_a_24_gib_gpu_stays_on_the_gpu(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients, parallel: int
    ) -> None:
        """gemma3:27b asked at 131072 on 24 GiB: direct it spills; governed it runs fully on GPU
        with the largest context that fits."""
        direct = await start_fake(vram_bytes=GPU_BYTES, num_parallel=parallel, models=[gemma3_27b()])
        await ollama_client(direct.url).generate(model="gemma3:27b", prompt="hi", options={"num_ctx": 131072})  # type: ignore[attr-defined]
        assert loaded_state(direct, "gemma3:27b").spilled, "the scenario must spill without the governor"

        fake, proxy = await governed_gpu(start_fake, start_proxy, '{ use = "headroom" }', parallel=parallel)
        with capture_logs() as logs:
            reply = await ollama_client(proxy.url).generate(
                model="gemma3:27b", prompt="hi", options={"num_ctx": 131072}
            )
            await settled(proxy)
        assert reply.done
        sent = fake.bodies("/api/generate")[-1]["options"]["num_ctx"]
        state = loaded_state(fake, "gemma3:27b")
        assert not state.spilled and state.size_vram == state.size
        assert 2048 <= sent < 131072
        # The largest bucket by the estimate: one step more would not fit free VRAM minus the reserve.
        facts = proxy.app[FACTS]
        model = facts.cached_facts("gemma3:27b")
        budget = GPU_BYTES - 1 * GIB
        assert estimate_bytes(model, sent, parallel, version=facts.version) <= budget
        assert estimate_bytes(model, sent + 2048, parallel, version=facts.version) > budget
        [result] = [e for e in logs if e["event"] == "result"]
        assert result["spilled"] is False and result["applied_num_ctx"] == sent
        assert "headroom: asked 131072" in result["changed_by"][0]["reason"]

    async def test_parallel_3_gets_less_than_parallel_1(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """Three slots triple the KV cache, so the chosen context shrinks accordingly."""
        chosen = []
        for parallel in (1, 3):
            fake, proxy = await governed_gpu(
                start_fake, start_proxy, '{ use = "headroom" }', parallel=parallel
            )
            await ollama_client(proxy.url).generate(
                model="gemma3:27b", prompt="hi", options={"num_ctx": 131072}
            )
            chosen.append(fake.bodies("/api/generate")[-1]["options"]["num_ctx"])
        assert chosen[1] < chosen[0]


class TestNoThrash:
    async def test_alternating_clients_cause_one_load(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """Two clients alternating 4096 and 16384 on one model: one load, not one per request."""
        fake, proxy = await governed_gpu(start_fake, start_proxy, '{ use = "headroom" }')
        client_a, client_b = ollama_client(proxy.url), ollama_client(proxy.url)
        for _ in range(3):
            await client_a.chat(
                model="gemma3:4b", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 4096}
            )
            await client_b.chat(
                model="gemma3:4b", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 16384}
            )
        assert fake.loads == [("gemma3:4b", 4096)]
        direct = await start_fake(vram_bytes=GPU_BYTES, models=[gemma3_4b()])
        for num_ctx in (4096, 16384) * 3:
            await ollama_client(direct.url).chat(
                model="gemma3:4b", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": num_ctx}
            )  # type: ignore[attr-defined]
        assert len(direct.loads) == 6  # what the governor saved

    async def test_concurrent_requests_during_a_load_reuse_it(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """Requests that arrive while the model is loading see the context being loaded."""
        fake, proxy = await governed_gpu(start_fake, start_proxy, '{ use = "headroom" }', load_delay_s=0.3)
        client = ollama_client(proxy.url)
        await asyncio.gather(
            *(
                client.chat(
                    model="gemma3:4b", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": n}
                )
                for n in (4096, 16384, 8192, 4096)
            )
        )
        assert len(fake.loads) == 1


class TestLongPrompts:
    async def test_prompt_larger_than_default_is_never_truncated_under_spill(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """A ~12K-token prompt with no num_ctx: a server default of 4096 (OLLAMA_CONTEXT_LENGTH=4096,
        or any host under 23 GiB of VRAM) would cut it; the governor raises the context to what the
        prompt needs."""
        fake, proxy = await governed_gpu(start_fake, start_proxy, '{ use = "headroom" }')
        prompt = "word " * 12_000  # ~60K chars, ~12-20K tokens
        direct = await start_fake(vram_bytes=GPU_BYTES, models=[gemma3_4b()], context_length_env=4096)
        await ollama_client(direct.url).generate(model="gemma3:4b", prompt=prompt)  # type: ignore[attr-defined]
        assert direct.truncated == ["/api/generate"]

        await ollama_client(proxy.url).generate(model="gemma3:4b", prompt=prompt)
        assert fake.truncated == []
        assert fake.bodies("/api/generate")[-1]["options"]["num_ctx"] >= len(prompt) // 3

    async def test_overflow_spills_rather_than_truncates(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """When the prompt needs more than fits, spill (the default) sends what it needs and warns."""
        fake, proxy = await governed_gpu(
            start_fake, start_proxy, '{ use = "headroom" }', models=[gemma3_27b()]
        )
        prompt = "word " * 64_000  # ~80K tokens: fits the trained 128K, not 24 GiB of VRAM
        with capture_logs() as logs:
            await ollama_client(proxy.url).generate(model="gemma3:27b", prompt=prompt)
            await settled(proxy)
        assert fake.truncated == []
        assert [e["event"] for e in logs if e["log_level"] == "warning"][:2] == ["overflow", "spill"]

    async def test_reject_returns_400(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """on_overflow = "reject": the client gets Ollama's error shape and nothing is sent."""
        fake, proxy = await governed_gpu(
            start_fake, start_proxy, '{ use = "headroom", on_overflow = "reject" }', models=[gemma3_27b()]
        )
        with pytest.raises(ollama.ResponseError) as info:
            await ollama_client(proxy.url).generate(model="gemma3:27b", prompt="word " * 64_000)
        assert info.value.status_code == 400
        assert info.value.error.startswith("prompt needs ~")
        assert info.value.error.endswith("fit in free GPU memory")
        assert fake.bodies("/api/generate") == []


class TestWithoutFacts:
    async def test_nvml_failure_forwards_the_client_value(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """No NVML library: no memory budget; the client's value covers the prompt, so it is sent
        as it was, uncapped, and the reason says why."""
        fake = await start_fake(vram_bytes=GPU_BYTES, models=[gemma3_4b()])
        broken = FakeNvml([])
        broken.init_error = FakeLibraryNotFound()
        proxy = await start_proxy(
            fake.url, config('{ use = "headroom" }'), memory_source=NvmlSource(nvml=broken)
        )  # type: ignore[attr-defined]
        with capture_logs() as logs:
            reply = await ollama_client(proxy.url).generate(
                model="gemma3:4b", prompt="hi", options={"num_ctx": 8192}
            )
            await settled(proxy)
        assert reply.done
        assert fake.bodies("/api/generate")[-1]["options"]["num_ctx"] == 8192
        [result] = [e for e in logs if e["event"] == "result"]
        assert result["changed_by"][0]["reason"].startswith("headroom[unknown]: no memory budget (")

    async def test_unreadable_show_fails_open(
        self, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """/api/show answering 500: no model facts, the request still goes through, governed by
        its need alone (the client's 8192 covers it)."""

        @web.middleware
        async def broken_show(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path == "/api/show":
                return web.json_response({"error": "boom"}, status=500)
            return await handler(request)  # type: ignore[no-any-return]

        fake = FakeOllama(vram_bytes=GPU_BYTES, models=[gemma3_4b()])
        fake.app.middlewares.append(broken_show)
        upstream = await start_app(fake.app)
        try:
            proxy = await start_proxy(
                upstream.url, config('{ use = "headroom" }'), memory_source=NvmlSource(nvml=following(fake))
            )
            with capture_logs() as logs:
                reply = await ollama_client(proxy.url).generate(
                    model="gemma3:4b", prompt="hi", options={"num_ctx": 8192}
                )
                await settled(proxy)
        finally:
            await upstream.runner.cleanup()
        assert reply.done
        assert fake.bodies("/api/generate")[-1]["options"]["num_ctx"] == 8192
        assert any(e["event"] == "facts_unavailable" for e in logs)
        [result] = [e for e in logs if e["event"] == "result"]
        assert (
            result["changed_by"][0]["reason"]
            == "headroom[unknown]: no facts about model 'gemma3:4b'; asked 8192, "
            "prompt needs 2048 (~1 + 1024 reply); using 8192, uncapped"
        )


class TestCalibration:
    async def test_one_load_improves_the_estimate(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """After one load, the calibrated estimate at that context equals what Ollama allocated:
        /api/ps size plus the full-attention KV cache 0.33 leaves out of it for this SWA model."""
        fake, proxy = await governed_gpu(
            start_fake, start_proxy, '{ use = "static", num_ctx = 8192 }', models=[gemma3_4b()]
        )
        await ollama_client(proxy.url).generate(model="gemma3:4b", prompt="hi")
        await settled(proxy)
        facts = proxy.app[FACTS]
        model = facts.cached_facts("gemma3:4b")
        allocated = fake.size_for(fake.models["gemma3:4b"], 8192)
        [state] = fake.loaded().values()
        assert state.size < allocated  # what /api/ps showed the governor
        raw = estimate_bytes(model, 8192)
        calibration = facts.calibrations.get(facts.calibration_key(model))
        assert calibration is not None
        calibrated = estimate_bytes(model, 8192, calibration=calibration)
        assert abs(calibrated - allocated) < abs(raw - allocated)
        assert abs(calibrated - allocated) <= 1


class TestWarmAtStart:
    async def test_config_warm_list_preloads_at_start(
        self, start_fake: StartFake, start_proxy: StartProxy
    ) -> None:
        """``warm = [...]`` preloads each model with the governor's decision when serving starts."""
        fake = await start_fake(vram_bytes=GPU_BYTES, models=[gemma3_4b()])
        await start_proxy(
            fake.url,  # type: ignore[attr-defined]
            'warm = ["gemma3:4b"]\n' + config('{ use = "static", num_ctx = 16384, keep_alive = "1h" }'),
            memory_source=NvmlSource(nvml=following(fake)),
        )
        await eventually(lambda: fake.loads, what="the warm-up load")
        assert fake.loads == [("gemma3:4b", 16384)]
        assert fake.bodies("/api/generate")[0]["keep_alive"] == "1h"
