"""``plan`` for names Ollama knows, against the fake: facts from /api/show, what is loaded from
/api/ps, the memory source ``serve`` would use, and headroom's choice equal to what the proxy sends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from policies.memory import estimate
from proxy.facts.tokens import TokenEstimator
from proxy.keys import FACTS, MEMORY
from proxy.request.prompt import measure
from tests.conftest import StartFake, StartProxy, client_requests, eventually, settled
from tests.fake_ollama import FakeOllama, gemma3_4b, gemma3_27b, llama3_1_8b
from tests.fakeollama.management import BLOB_DIR
from tests.test_plan import plan_data
from tests.test_scheduler_fake import facts_of

V033 = "0.33.0-rc2"
GiB = 1 << 30

GPU_CONFIG = """
[gpu]
source = "ollama"
vram_total = ["24GiB"]
interval = "50ms"

[ollama]
ps_interval = "100ms"
"""
"""The memory source a governor away from the GPU host uses: the total less what /api/ps reports."""


@pytest.fixture
def gpu_config(tmp_path: Path) -> Path:
    path = tmp_path / "gpu.toml"
    path.write_text(GPU_CONFIG)
    return path


async def generate(http: aiohttp.ClientSession, url: str, model: str, **body: Any) -> dict[str, Any]:
    async with http.post(url + "/api/generate", json={"model": model, "stream": False, **body}) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = json.loads(await response.read())
        return answer


class TestThroughShow:
    async def test_facts_and_figures_come_from_ollama(
        self, start_fake: StartFake, http: aiohttp.ClientSession, gpu_config: Path
    ) -> None:
        """A name is planned from /api/show (verbose) and /api/tags, its blob from the Modelfile."""
        fake = await start_fake(version=V033, models=[gemma3_27b(), gemma3_4b()], vram_bytes=24 * GiB)
        url: str = fake.url  # type: ignore[attr-defined]
        data = await plan_data(gpu_config, "gemma3:27b", "--upstream", url, "--ctx", "8192,131072")
        (model,) = data["models"]
        assert (model["source"], model["path"]) == ("ollama", f"{BLOB_DIR}/sha256-{gemma3_27b().blob}")
        facts = await facts_of(http, url, "gemma3:27b")
        for row in model["contexts"]:
            assert (
                row["total_bytes"] == estimate(facts, row["num_ctx"], n_ubatch=row["num_batch"]).total_bytes
            )
        assert [row["action"] for row in model["contexts"]] == ["load", "spill"]
        assert (data["ollama"]["version"], data["ollama"]["version_from"]) == ("0.33.0", "ollama")
        assert (data["memory"]["source"], data["memory"]["free_bytes"], data["loaded"]) == (
            "ollama",
            24 * GiB,
            [],
        )

    async def test_the_predicted_eviction_happens(
        self, start_fake: StartFake, http: aiohttp.ClientSession, gpu_config: Path
    ) -> None:
        """With gemma3:4b loaded, plan says gemma3:27b at 8192 unloads it; then the fake does."""
        fake = await start_fake(version=V033, models=[gemma3_27b(), gemma3_4b()], vram_bytes=24 * GiB)
        url: str = fake.url  # type: ignore[attr-defined]
        await generate(http, url, "gemma3:4b", prompt="hi", options={"num_ctx": 8192})
        data = await plan_data(gpu_config, "gemma3:27b", "--upstream", url, "--ctx", "8192")
        assert [entry["name"] for entry in data["loaded"]] == ["gemma3:4b"]
        (row,) = data["models"][0]["contexts"]
        assert (row["action"], [e["name"] for e in row["evicts"]]) == ("evict", ["gemma3:4b"])
        assert data["models"][0]["largest_fit_beside_loaded"] is None
        await generate(http, url, "gemma3:27b", prompt="hi", options={"num_ctx": 8192})
        assert [(e.name, e.reason) for e in fake.evictions] == [("gemma3:4b", "fit")]

    async def test_two_names_together(self, start_fake: StartFake, gpu_config: Path) -> None:
        """gemma3:27b and llama3.1:8b never stay loaded together on 24 GiB: Ollama's estimate evicts."""
        fake = await start_fake(version=V033, models=[gemma3_27b(), llama3_1_8b()], vram_bytes=24 * GiB)
        url: str = fake.url  # type: ignore[attr-defined]
        data = await plan_data(gpu_config, "llama3.1:8b", "gemma3:27b", "--upstream", url)
        together = data["together"]
        assert not together["side_by_side"]
        assert together["at_headroom"]["resident"] == ["gemma3:27b"]


def prompt_tokens(model: str, prompt: str) -> int:
    """What a fresh proxy estimates for this prompt (before any answer taught it a ratio)."""
    return TokenEstimator().estimate(model, measure("generate", {"model": model, "prompt": prompt}))


CASES = {
    "short-prompt": (None, "Why is the sky blue?"),
    "memory-caps-the-default": ("llama3.1:8b", "Why is the sky blue?"),
    "prompt-beyond-what-fits": (None, "word " * 40000),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_plans_choice_is_what_headroom_sends(
    start_fake: StartFake,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    gpu_config: Path,
    case: tuple[str | None, str],
) -> None:
    """``plan``'s headroom choice equals the num_ctx the proxy sends for the same request and memory."""
    first, prompt = case
    fake: FakeOllama = await start_fake(
        version=V033, models=[gemma3_27b(), llama3_1_8b()], vram_bytes=24 * GiB
    )
    url: str = fake.url  # type: ignore[attr-defined]
    proxy = await start_proxy(url, GPU_CONFIG)
    if first is not None:
        await generate(http, url, first, prompt="hi", options={"num_ctx": 4096})
    free = fake.vram_bytes - sum(state.size_vram for state in fake.loaded().values())  # type: ignore[operator]
    await eventually(lambda: proxy.app[MEMORY].snapshot.free_bytes == free, what="the proxy to read /api/ps")
    await eventually(lambda: len(proxy.app[FACTS].loaded) == len(fake.loaded()), what="the proxy's /api/ps")

    tokens = prompt_tokens("gemma3:27b", prompt)
    data = await plan_data(gpu_config, "gemma3:27b", "--upstream", url, "--prompt-tokens", str(tokens))
    planned = data["models"][0]
    await generate(http, proxy.url, "gemma3:27b", prompt=prompt)
    await settled(proxy)
    sent = client_requests(fake)[-1].json()
    assert sent["options"]["num_ctx"] == planned["headroom"]["num_ctx"]
    chosen = planned["headroom"]["num_ctx"]
    if first is not None:
        assert chosen < planned["default_num_ctx"]  # memory, not the default, decided
    elif len(prompt) > 1000:
        assert planned["headroom"]["outcome"] == "overflow"
    else:
        assert chosen == planned["default_num_ctx"]
