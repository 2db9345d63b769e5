"""The fake Ollama's compressed time, and the scenario benchmark built on it.

Why: the scenario benchmark (bench/scenarios.py) reports the fake's durations as if they were
Ollama's; they must be the simulated ones (minutes of loading, ~10 tok/s), not the compressed
wall time, or the published table would be off by the compression factor.
"""

from __future__ import annotations

from typing import Any

from bench.scenarios import render, run_side, scenarios
from tests.conftest import OllamaClients, StartFake
from tests.fake_ollama import FakeOllama, gemma3_27b

GiB = 1 << 30


class TestTimeScale:
    async def test_durations_are_reported_in_simulated_time(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """Sleeping 1/1000 of the delays, the fake still reports the full load, prompt and eval time."""
        model = gemma3_27b()
        fake = await start_fake(
            models=[model],
            vram_bytes=24 * GiB,
            token_delay_s=0.1,
            reply_tokens=20,
            load_bytes_per_s=2e9,
            time_scale=1000.0,
        )
        reply = await ollama_client(fake.url).generate(
            model="gemma3:27b", prompt="hi", options={"num_ctx": 8192}
        )  # type: ignore[attr-defined]
        load_s = model.weights_bytes / 2e9
        assert reply.load_duration is not None and reply.eval_duration is not None
        assert abs(reply.load_duration / 1e9 - load_s) < 0.5
        assert abs(reply.eval_duration / 1e9 - 2.0) < 0.2  # 20 tokens at 10 tok/s
        assert reply.prompt_eval_duration is not None and abs(reply.prompt_eval_duration / 1e9 - 0.1) < 0.05
        assert reply.total_duration is not None and reply.total_duration / 1e9 >= load_s + 2.0
        assert fake.completions[-1].spilled is False and fake.completions[-1].num_ctx == 8192

    async def test_spilled_load_and_generation_are_slower(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """A context that does not fit spills: loads and tokens take spill_slowdown times longer."""
        model = gemma3_27b()
        fake = await start_fake(
            models=[model],
            vram_bytes=24 * GiB,
            token_delay_s=0.1,
            reply_tokens=10,
            load_bytes_per_s=2e9,
            time_scale=1000.0,
        )
        reply = await ollama_client(fake.url).generate(
            model="gemma3:27b", prompt="hi", options={"num_ctx": 131072}
        )  # type: ignore[attr-defined]
        assert fake.completions[-1].spilled is True
        assert reply.load_duration is not None and reply.eval_duration is not None
        assert abs(reply.load_duration / 1e9 - 10 * model.weights_bytes / 2e9) < 1.0
        assert abs(reply.eval_duration / 1e9 - 10.0) < 0.5  # 10 tokens at 1 tok/s

    def test_load_seconds_defaults_to_the_fixed_delay(self) -> None:
        """Without load_bytes_per_s the load time is load_delay_s, as before."""
        fake = FakeOllama(models=[gemma3_27b()], load_delay_s=0.3, spill_slowdown=4.0)
        assert fake.load_seconds(gemma3_27b(), spilled=False) == 0.3
        assert fake.load_seconds(gemma3_27b(), spilled=True) == 1.2


class TestScenarioBenchmark:
    async def test_alternating_clients_reload_only_without_the_governor(self) -> None:
        """Scenario b (smoke): one load per request straight to Ollama, one in all when governed."""
        [scenario] = [s for s in scenarios(smoke=True) if s.key == "b"]
        without = await run_side(scenario, governed=False)
        governed = await run_side(scenario, governed=True)
        assert without["loads"] == scenario.requests and governed["loads"] == 1
        assert governed["load_s"] < without["load_s"] / 2
        result: dict[str, Any] = {
            "time_scale": 500.0,
            "note": "simulated",
            "scenarios": [
                {
                    "key": "b",
                    "title": scenario.title,
                    "host": "h",
                    "governor": "g",
                    "without": without,
                    "with_governor": governed,
                }
            ],
        }
        table = render(result)
        assert "governed" in table and table.rstrip().endswith("simulated")

    async def test_seed_scenario_spills_only_without_the_governor(self) -> None:
        """Scenario a1 (smoke): 131072 spills gemma3:27b on 24 GiB; governed it stays on the GPU."""
        [scenario] = [s for s in scenarios(smoke=True) if s.key == "a1"]
        without = await run_side(scenario, governed=False)
        governed = await run_side(scenario, governed=True)
        assert without["spilled_requests"] == scenario.requests and governed["spilled_requests"] == 0
        assert (
            without["median_eval_tokens_per_s"] is not None
            and governed["median_eval_tokens_per_s"] is not None
        )
        assert 0.8 < without["median_eval_tokens_per_s"] < 1.2
        assert 8.0 < governed["median_eval_tokens_per_s"] < 12.0
