"""``python -m bench all --smoke`` keeps working: every section is there and holds numbers.

A benchmark is not a test: nothing here looks at how fast anything was, only that the run
finished, checked every answer, and wrote the JSON the README's figures come from.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT_DIR


def _numbers(value: Any) -> list[float]:
    """Every number in a JSON value (booleans are not numbers here)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--smoke", "--json", str(out)],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


class TestBenchSmoke:
    """The smoke run covers every section of the benchmark."""

    @pytest.mark.timeout(150)
    def test_every_overhead_section_has_numbers(self, smoke: dict[str, Any]) -> None:
        """Each overhead section exists and carries finite numbers."""
        overhead = smoke["overhead"]
        for section in (
            "upstream_alone",
            "latency",
            "ttfb",
            "streams",
            "open_streams",
            "blob",
            "chain",
            "ablation",
            "verdict",
        ):
            numbers = _numbers(overhead[section])
            assert numbers, section
            assert all(math.isfinite(n) for n in numbers), section

    @pytest.mark.timeout(150)
    def test_every_target_is_measured(self, smoke: dict[str, Any]) -> None:
        """Direct and the governor are always measured, at every point."""
        overhead = smoke["overhead"]
        assert "direct" in overhead["targets"]
        assert any(name.startswith("governor") for name in overhead["targets"])
        for kind in ("chat", "tags"):
            for point in overhead["latency"][kind].values():
                assert set(point) == set(overhead["targets"])

    @pytest.mark.timeout(150)
    def test_answers_were_checked_and_intact(self, smoke: dict[str, Any]) -> None:
        """No answer through any proxy was wrong: the benchmark checks every byte it gets."""
        overhead = smoke["overhead"]
        for point in overhead["open_streams"].values():
            assert point["completed"] == point["streams"] and point["corrupted"] == 0
        for points in overhead["streams"].values():
            assert all(p["corrupted"] == 0 and p["failed"] == 0 for p in points.values())
        assert all(p["intact"] for p in overhead["blob"].values())
        for kind in ("chat", "tags"):
            for point in overhead["latency"][kind].values():
                assert all(p["errors"] == 0 for p in point.values())

    @pytest.mark.timeout(150)
    def test_scenarios_and_machine_are_recorded(self, smoke: dict[str, Any]) -> None:
        """The scenario section has numbers and the machine is described."""
        assert _numbers(smoke["scenarios"]) and "error" not in smoke["scenarios"]
        assert smoke["machine"]["python"] and smoke["machine"]["cores"]


class TestClusterSmoke:
    """The cluster section of the smoke run: simulated, every policy at every model count."""

    @pytest.mark.timeout(150)
    def test_every_policy_is_simulated(self, smoke: dict[str, Any]) -> None:
        """Each model count has a row per policy with loads and finite times to first token."""
        from bench.cluster import MODEL_COUNTS, POLICIES

        cluster = smoke["cluster"]
        assert cluster["simulated"] is True
        assert [(r["models"], r["policy"]) for r in cluster["rows"]] == [
            (count, policy) for count in MODEL_COUNTS for policy in POLICIES
        ]
        for row in cluster["rows"]:
            assert row["requests"] > 0 and row["loads"] > 0
            assert math.isfinite(row["ttft_p50_s"]) and row["ttft_p99_s"] >= row["ttft_p50_s"]


class TestFaultsSmoke:
    """``python -m bench faults --smoke`` runs every fault and reports each one."""

    @pytest.mark.timeout(180)
    def test_every_fault_is_tried_and_held(self, tmp_path: Any) -> None:
        """Each fault has a row; the run ends with the drain, nothing lost and no secret logged."""
        out = tmp_path / "faults.json"
        done = subprocess.run(
            [sys.executable, "-m", "bench", "faults", "--smoke", "--json", str(out)],
            cwd=ROOT_DIR,
            capture_output=True,
            text=True,
            timeout=170,
            check=False,
        )
        result = json.loads(out.read_text())["faults"]
        failed = [row for row in result["rows"] if not row["passed"]]
        assert failed == [], done.stdout[-3000:]
        kinds = {row["kind"] for row in result["rows"]}
        assert {"bad input", "client", "policy", "upstream", "load", "shutdown", "whole run"} <= kinds
        assert result["summary"]["nothing_lost"] and result["summary"]["secrets_leaked"] == []
        assert done.returncode == 0


class TestCallsSmoke:
    """``python -m bench.calls`` profiles a served governor and counts its calls per request."""

    @pytest.mark.timeout(120)
    @pytest.mark.parametrize("kind", ["chat", "tags"])
    def test_it_counts_calls_per_request(self, kind: str) -> None:
        """A governed chat costs more Python calls than a relayed tags, both a positive count."""
        from bench.calls import measure

        calls, micros = measure(kind, 50)
        assert calls > 0 and micros > 0
        # start-up is spread over the requests: 250 of them leave hundreds of calls each
        assert calls > (1000 if kind == "chat" else 300)


class TestInstructions:
    """``python -m bench.instructions`` counts what one served request costs under valgrind."""

    def test_two_runs_give_the_cost_of_one_request(self, tmp_path: Path) -> None:
        """The figure is the difference of two runs' summaries over their extra requests."""
        from bench.instructions import counted, per_request

        few, more = tmp_path / "few.out", tmp_path / "more.out"
        few.write_bytes(b"desc: I1 cache:\ncmd: python -m proxy serve\nevents: Ir\nsummary: 3000000\n")
        more.write_bytes(b"events: Ir\nfl=x.c\nfn=f\n1 5\nsummary: 5000000\n")
        assert per_request((200, counted(few)), (1200, counted(more))) == 2000.0
        (tmp_path / "broken.out").write_bytes(b"events: Ir\n")
        with pytest.raises(ValueError, match="summary"):
            counted(tmp_path / "broken.out")
        with pytest.raises(ValueError, match="more requests"):
            per_request((200, 1), (200, 2))

    @pytest.mark.timeout(300)
    def test_a_governed_chat_costs_more_than_a_relayed_tags(self) -> None:
        """Served under cachegrind for real (CI installs valgrind): all positive, chat above tags,
        a stream of 100 lines above one chat."""
        if shutil.which("valgrind") is None:
            pytest.skip("valgrind is not installed")
        from bench.instructions import measure

        chat, tags, stream = measure("chat", 5, 25), measure("tags", 5, 25), measure("stream", 1, 3)
        assert 0 < tags < chat < stream
