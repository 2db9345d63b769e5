"""Governing on every host, out of the box, through the official client against the 0.33 fake.

The maintainers check the same against a real Ollama 0.33 on a host with no GPU: alternating
clients load the model once, and a prompt longer than the server's default context is evaluated
whole, with no config file at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.memory import GIB
from proxy.config import parse_config
from proxy.facts.memory import NoGpuSource, NvmlSource
from proxy.facts.memory.amdgpu import AmdgpuSource
from proxy.facts.memory.meminfo import MeminfoSource
from proxy.keys import MEMORY
from tests.conftest import OllamaClients, Running, StartFake, StartProxy, settled
from tests.fake_nvml import following
from tests.fake_ollama import FakeOllama, gemma3_4b, gemma3_27b, nomic_embed_text
from tests.hosts import DrmCard, amd_sysfs, meminfo

ALTERNATING = (2048, 8192, None) * 3
"""Two clients that disagree on num_ctx and one that names none, round robin: 9 requests."""
LONG_PROMPT = "the quick brown fox jumps over the lazy dog " * 1000
"""~45,000 characters: ~11,000 tokens to the fake's tokenizer, well past a 4096 default."""


async def no_config_proxy(start_proxy: StartProxy, fake: FakeOllama, **options: object) -> Running:
    """The governor as ``serve`` runs with no config file: the built-in rule governs every model."""
    config = parse_config({})
    assert config.default_rules
    return await start_proxy(fake.url, config, **options)  # type: ignore[attr-defined]


class TestCpuOnlyHostWithoutConfig:
    """No GPU, no NVML, no config file: what most Ollama users run."""

    async def test_alternating_clients_load_the_model_once(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients, tmp_path: Path
    ) -> None:
        """2048 / 8192 / unset round robin: 9 loads straight at Ollama, one through the governor
        (which reads system memory, as ``auto`` picks on a Linux host without a GPU)."""
        direct = await start_fake()
        for num_ctx in ALTERNATING:
            options = {} if num_ctx is None else {"num_ctx": num_ctx}
            await ollama_client(direct.url).generate(model="gemma3-270m", prompt="hi", options=options)  # type: ignore[attr-defined]
        assert len(direct.loads) == 9

        fake = await start_fake()
        proxy = await no_config_proxy(
            start_proxy, fake, memory_source=MeminfoSource(meminfo(tmp_path / "meminfo"))
        )
        client = ollama_client(proxy.url)
        for num_ctx in ALTERNATING:
            options = {} if num_ctx is None else {"num_ctx": num_ctx}
            reply = await client.generate(model="gemma3-270m", prompt="hi", options=options)
            assert reply.done
        await settled(proxy)
        assert len(fake.loads) == 1

    async def test_without_any_memory_source_too(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """Even with no memory figure at all (source none), the alternating clients load once."""
        fake = await start_fake()
        proxy = await no_config_proxy(start_proxy, fake, memory_source=NoGpuSource("no GPU on this host"))
        client = ollama_client(proxy.url)
        for num_ctx in ALTERNATING:
            options = {} if num_ctx is None else {"num_ctx": num_ctx}
            assert (await client.generate(model="gemma3-270m", prompt="hi", options=options)).done
        assert len(fake.loads) == 1

    async def test_a_prompt_longer_than_the_default_is_evaluated_whole(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """~11k tokens with no num_ctx: Ollama's 4096 default cuts it; governed, it is evaluated whole."""
        direct = await start_fake()
        cut = await ollama_client(direct.url).generate(model="gemma3-270m", prompt=LONG_PROMPT)  # type: ignore[attr-defined]
        assert direct.truncated == ["/api/generate"] and cut.prompt_eval_count is not None
        assert cut.prompt_eval_count < 4096

        fake = await start_fake()
        proxy = await no_config_proxy(start_proxy, fake, memory_source=NoGpuSource("no GPU on this host"))
        whole = await ollama_client(proxy.url).generate(model="gemma3-270m", prompt=LONG_PROMPT)
        assert fake.truncated == []
        assert whole.prompt_eval_count is not None and whole.prompt_eval_count > 10_000
        sent = fake.bodies("/api/generate")[-1]["options"]["num_ctx"]
        assert sent >= whole.prompt_eval_count


class TestAmdGpu:
    async def test_the_amdgpu_budget_caps_the_fit(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients, tmp_path: Path
    ) -> None:
        """An AMD card read from sysfs: a client asking 131072 for gemma3:27b on 24 GiB gets what
        fits in the card's free VRAM, and the model stays on the GPU."""
        fake = await start_fake(vram_bytes=24 * GIB, models=[gemma3_27b()])
        amd_sysfs(tmp_path, [DrmCard(vram_total_bytes=24 * GIB, vram_used_bytes=512 * (1 << 20))])
        proxy = await no_config_proxy(start_proxy, fake, memory_source=AmdgpuSource(root=tmp_path))
        await proxy.app[MEMORY].refresh()
        assert proxy.app[MEMORY].snapshot.free_bytes == 24 * GIB - 512 * (1 << 20)
        await ollama_client(proxy.url).generate(model="gemma3:27b", prompt="hi", options={"num_ctx": 131072})
        sent = fake.bodies("/api/generate")[-1]["options"]["num_ctx"]
        assert 4096 < sent < 131072
        [state] = fake.loaded().values()
        assert not state.spilled


class TestRagOnASmallGpu:
    async def test_chat_and_embedding_stay_loaded_side_by_side(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """A RAG loop (embed the question, then chat) on an 8 GiB GPU: two loads in all."""
        total = 8 * GIB
        fake = await start_fake(vram_bytes=total, models=[gemma3_4b(), nomic_embed_text()])
        proxy = await no_config_proxy(start_proxy, fake, memory_source=NvmlSource(nvml=following(fake)))
        await proxy.app[MEMORY].refresh()
        client = ollama_client(proxy.url)
        for turn in range(5):
            embedded = await client.embed(model="nomic-embed-text", input=f"question {turn}")
            assert embedded.embeddings
            reply = await client.chat(
                model="gemma3:4b", messages=[{"role": "user", "content": f"question {turn}"}]
            )
            assert reply.done
            await settled(proxy)
            await proxy.app[MEMORY].refresh()
        assert [name for name, _ in fake.loads] == ["nomic-embed-text:latest", "gemma3:4b"]
        assert not fake.evictions
        assert all(not state.spilled for state in fake.loaded().values())

    async def test_embeddings_are_recorded_like_the_others(
        self, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
    ) -> None:
        """An /api/embed request is governed and recorded: its load and tokens/s are in the result."""
        fake = await start_fake(models=[nomic_embed_text()])
        recorded: list[object] = []
        proxy = await no_config_proxy(
            start_proxy, fake, memory_source=NoGpuSource("no GPU"), sinks=[recorded.append]
        )
        await ollama_client(proxy.url).embed(model="nomic-embed-text", input=["a question", "another one"])
        await settled(proxy)
        [record] = recorded
        assert record.endpoint == "embed"  # type: ignore[attr-defined]
        assert record.status == 200 and record.load_ms is not None  # type: ignore[attr-defined]
        assert record.prompt_tokens and record.prompt_tokens_per_s  # type: ignore[attr-defined]
        assert "keep_alive" not in fake.bodies("/api/embed")[-1]  # safe default: not touched


@pytest.mark.parametrize("version", ["0.33.0-rc2", "0.32.15"])
async def test_no_config_governs_with_the_server_default_in_mind(
    version: str, start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients
) -> None:
    """An omitted num_ctx is sent as the server default (what Ollama would load anyway) when the
    prompt fits it: the default rule adds no reload of its own."""
    fake = await start_fake(version=version)
    proxy = await no_config_proxy(start_proxy, fake, memory_source=NoGpuSource("no GPU"))
    await ollama_client(proxy.url).generate(model="gemma3-270m", prompt="hi")
    assert fake.bodies("/api/generate")[-1]["options"]["num_ctx"] == 4096
