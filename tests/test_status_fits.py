"""``/governor/status`` ``fits``: the loaded and recently used models, sized by the same functions
``plan`` uses, agreeing with a ``plan`` run against the same Ollama."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from policies.context import GpuDevice, GpuSnapshot
from proxy.config.settings import OllamaSettings
from proxy.keys import FACTS, MEMORY
from proxy.views.fits import FitInputs, FitModel, _model_fit, fits_json
from tests.conftest import Running, StartFake, StartProxy, eventually, settled
from tests.fake_ollama import FakeOllama, gemma3_4b, gemma3_27b
from tests.test_memory import gemma3_27b as gemma3_27b_facts
from tests.test_plan import plan_data
from tests.test_plan_ollama import GPU_CONFIG, generate

V033 = "0.33.0-rc2"
GiB = 1 << 30


async def fits_of(http: aiohttp.ClientSession, proxy: Running) -> dict[str, dict[str, Any]]:
    async with http.get(proxy.url + "/governor/status") as response:
        assert response.status == 200
        body = await response.json()
    return {entry["model"]: entry for entry in body["fits"]}


def calibrations(state: Path) -> dict[str, Any]:
    """What the proxy saved of its calibrations (empty before the first save)."""
    try:
        data: dict[str, Any] = json.loads((state / "calibration.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data


async def caught_up(proxy: Running, fake: FakeOllama) -> None:
    """Wait until the proxy's /api/ps shows what the fake holds, and memory was read after that."""
    names = set(fake.loaded())
    await eventually(lambda: {m.name for m in proxy.app[FACTS].loaded} == names, what="the proxy's /api/ps")
    seen = time.time()
    await eventually(lambda: proxy.app[MEMORY].snapshot.taken_at > seen, what="a memory reading after it")


async def test_loaded_and_recent_models_agree_with_plan(
    start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """After gemma3:4b then gemma3:27b (which unloads it), both are listed; the figures are plan's,
    calibrated by what the proxy learnt from the two loads."""
    fake: FakeOllama = await start_fake(version=V033, models=[gemma3_27b(), gemma3_4b()], vram_bytes=24 * GiB)
    url: str = fake.url  # type: ignore[attr-defined]
    state = tmp_path / "state"
    config_text = f'state_dir = "{state}"\n{GPU_CONFIG}'
    proxy = await start_proxy(url, config_text)
    await generate(http, proxy.url, "gemma3:4b", prompt="hi", options={"num_ctx": 8192})
    await generate(http, proxy.url, "gemma3:27b", prompt="hi")
    await settled(proxy)
    await caught_up(proxy, fake)
    await eventually(lambda: len(calibrations(state)) == 2, what="both loads calibrated and saved")
    fits = await fits_of(http, proxy)
    assert list(fits) == ["gemma3:27b", "gemma3:4b"]  # the loaded one first, then the recent one
    big, small = fits["gemma3:27b"], fits["gemma3:4b"]
    assert big["loaded_num_ctx"] is not None and small["loaded_num_ctx"] is None
    assert small["client_num_ctx"] == 8192 and big["client_num_ctx"] is None and big["at_client"] is None

    config = tmp_path / "gpu.toml"  # plan_data keeps its state beside it: the proxy's state dir
    config.write_text(config_text)
    planned = await plan_data(config, "gemma3:4b", "gemma3:27b", "--upstream", url, "--ctx", "8192")
    small_plan, big_plan = planned["models"]
    assert small["largest_fit"] == small_plan["largest_fit"]
    assert small["largest_fit_now"] == small_plan["largest_fit_beside_loaded"]
    assert small["at_client"]["action"] == small_plan["contexts"][0]["action"]
    assert small["at_client"]["total_bytes"] == small_plan["contexts"][0]["total_bytes"]
    assert small_plan["calibration"]["calibrated"] and big_plan["calibration"]["calibrated"]
    assert (small["default_num_ctx"], small["at_default"]["action"]) == (
        small_plan["default_num_ctx"],
        small_plan["at_default"]["action"],
    )
    assert big["largest_fit"] == big_plan["largest_fit"]
    assert big["at_default"]["action"] == big_plan["at_default"]["action"]


async def test_nothing_used_yet(
    start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """Before any request and with nothing loaded the list is empty."""
    fake = await start_fake(version=V033, models=[gemma3_4b()], vram_bytes=24 * GiB)
    proxy = await start_proxy(fake.url, GPU_CONFIG)  # type: ignore[attr-defined]
    assert await fits_of(http, proxy) == {}


class TestFitsJson:
    def inputs(self, taken_at: float) -> FitInputs:
        device = GpuDevice(0, "gpu", 24 * GiB, 20 * GiB, 4 * GiB)
        snapshot = GpuSnapshot(source="nvml", devices=(device,), taken_at=taken_at)
        model = FitModel("gemma3:27b", gemma3_27b_facts(), None, None, client_num_ctx=8192)
        return FitInputs((model,), (), snapshot, OllamaSettings(), (0, 33, 0))

    def test_a_new_sample_of_the_same_memory_reuses_the_answer(self) -> None:
        """The status page asks every 10 s: the same model, loaded set and memory are sized once."""
        first = fits_json(self.inputs(taken_at=1.0))
        hits = _model_fit.cache_info().hits
        assert fits_json(self.inputs(taken_at=2.0)) == first
        assert _model_fit.cache_info().hits == hits + 1

    def test_the_entry(self) -> None:
        """A model not loaded: what Ollama does at the client's last value and at the default."""
        (entry,) = fits_json(self.inputs(taken_at=1.0))
        assert (entry["model"], entry["loaded_num_ctx"], entry["client_num_ctx"]) == (
            "gemma3:27b",
            None,
            8192,
        )
        assert entry["at_client"]["num_ctx"] == 8192 and entry["default_num_ctx"] == 32768
        assert entry["largest_fit"] == entry["largest_fit_now"] is not None and entry["error"] is None

    def test_a_model_without_facts(self) -> None:
        """A recent model whose /api/show has not answered says so."""
        inputs = self.inputs(taken_at=1.0)
        inputs = dataclasses.replace(inputs, models=(FitModel("x:latest", None, None, None, None),))
        assert fits_json(inputs)[0]["error"] == "no facts yet (/api/show has not answered for it)"
