"""The memory model against llama-server's own allocations, recorded on Ollama 0.33.0-rc2.

tests/data/memory_matrix_v0_33.json holds, for every load of ollama-transcripts/v0.33.0-rc2/
memory-matrix.txt, the buffer sizes llama-server logged (as printed, in MiB with two decimals),
the launch flags Ollama chose and what ``/api/ps`` reported. Two models of different shapes:
gemma3-270m (sliding-window attention) and a random-weight llama, on a CPU-only host.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from policies.memory import (
    MIB,
    Calibration,
    auto_num_batch,
    estimate,
    kv_cache_bytes,
    ps_unreported_bytes,
)
from policies.model import ModelFacts
from policies.ollama import loaded_num_ctx

DATA = Path(__file__).parent / "data"

Row = dict[str, Any]


@cache
def matrix() -> dict[str, Any]:
    """The recorded table (plain data, read once)."""
    data: dict[str, Any] = json.loads((DATA / "memory_matrix_v0_33.json").read_text())
    return data


def rows(model: str | None = None) -> list[Row]:
    """Every recorded load, or those of one model."""
    return [row for row in matrix()["rows"] if model is None or row["model"] == model]


def row_id(row: Row) -> str:
    """``m-p3-32768``: the instance and the requested context."""
    return f"{row['instance']}-{row['num_ctx']}"


def model_facts(name: str) -> ModelFacts:
    """The model as the governor knows it: gemma3-270m from its recorded /api/show, llama-tiny built."""
    shape = matrix()["models"][name]
    if name == "gemma3-270m":
        show = json.loads((DATA / "show_gemma3_270m.json").read_text())
        return ModelFacts.from_show(name, show, {"size": shape["file_bytes"]})
    return ModelFacts(
        name=name,
        architecture=shape["architecture"],
        context_length=shape["context_length"],
        block_count=shape["block_count"],
        embedding_length=shape["embedding_length"],
        head_count=shape["head_count"],
        head_count_kv=shape["head_count_kv"],
        key_length=shape["key_length"],
        value_length=shape["value_length"],
        vocab_size=shape["vocab_size"],
        weights_bytes=shape["file_bytes"],
        capabilities=("completion",),
        model_info=MappingProxyType(
            {f"{shape['architecture']}.feed_forward_length": shape["feed_forward_length"]}
        ),
    )


def estimate_for(row: Row) -> Any:
    """The uncalibrated estimate for the load a row records, with Ollama's automatic batch."""
    return estimate(model_facts(row["model"]), row["num_ctx"], row["num_parallel"], row["kv_cache_type"])


def printed(n_bytes: int) -> str:
    """A byte count as llama-server prints it: MiB with two decimals."""
    return f"{n_bytes / MIB:.2f}"


def parsed(mib_text: str) -> int:
    """A printed MiB figure as Ollama parses it into bytes (``uint64(mib * 1024 * 1024)``)."""
    return int(float(mib_text) * MIB)


def allocated_bytes(row: Row) -> int:
    """Everything llama-server logged for the load: model, KV, output and compute buffers."""
    lines = [
        *row["model_buffers_mib"].values(),
        *row["kv_buffer_lines_mib"],
        row["output_mib"],
        row["compute_mib"],
    ]
    return sum(parsed(line) for line in lines)


ALL = pytest.mark.parametrize("row", rows(), ids=row_id)


class TestRecordedLaunch:
    @ALL
    def test_batch_and_context(self, row: Row) -> None:
        """Ollama's automatic -ub and its -c (num_ctx x P, clamped to the trained length) are predicted."""
        model = model_facts(row["model"])
        num_ctx = loaded_num_ctx(row["num_ctx"], model.context_length)
        assert auto_num_batch(num_ctx, row["num_parallel"]) == row["n_ubatch"]
        assert num_ctx * row["num_parallel"] == row["arg_c"]
        assert num_ctx == row["ps_context_length"]


class TestRecordedKvCache:
    @ALL
    def test_full_and_swa_parts(self, row: Row) -> None:
        """Each part matches its ``llama_kv_cache: size =`` line exactly as printed."""
        result = estimate_for(row)
        assert printed(result.kv_full_bytes) == row["kv_full_mib"]
        assert printed(result.kv_swa_bytes) == (row["kv_swa_mib"] or "0.00")
        assert result.kv_bytes == result.kv_full_bytes + result.kv_swa_bytes

    @ALL
    def test_total(self, row: Row) -> None:
        """``kv_cache_bytes`` is the sum of the two parts llama-server allocated."""
        model = model_facts(row["model"])
        total = kv_cache_bytes(
            model, row["num_ctx"], row["num_parallel"], row["kv_cache_type"], n_ubatch=row["n_ubatch"]
        )
        logged_mib = sum(float(line) for line in row["kv_buffer_lines_mib"])
        assert total / MIB == pytest.approx(logged_mib, abs=0.01)


class TestRecordedComputeBuffer:
    @ALL
    def test_graph(self, row: Row) -> None:
        """The compute buffer within 0.12 MiB with an f16 cache, 2 MiB with q8_0 (not modelled)."""
        tolerance_mib = 0.12 if row["kv_cache_type"] == "f16" else 2.0
        graph_mib = estimate_for(row).graph_bytes / MIB
        assert graph_mib == pytest.approx(float(row["compute_mib"]), abs=tolerance_mib)

    @ALL
    def test_output(self, row: Row) -> None:
        """The output buffer is one f32 row of the vocabulary per slot, as printed."""
        assert printed(estimate_for(row).output_bytes) == row["output_mib"]


class TestRecordedTotal:
    @ALL
    def test_against_allocation(self, row: Row) -> None:
        """Uncalibrated, the estimate is at most 2.5% above what llama-server allocated, never below.

        The excess is the GGUF metadata counted in the file size (6.2 MiB for gemma3-270m:
        253,113,841 B on disk, 222.51 + 12.66 MiB of model buffers).
        """
        ratio = estimate_for(row).raw_bytes / allocated_bytes(row)
        assert 1.0 <= ratio <= 1.025

    @ALL
    def test_against_memory_breakdown(self, row: Row) -> None:
        """Against llama-server's own "Host" + "CPU_REPACK" totals (whole MiB, no output buffer) too."""
        breakdown_bytes = (row["host_total_mib"] + row["repack_total_mib"]) * MIB
        assert 1.0 <= estimate_for(row).raw_bytes / breakdown_bytes <= 1.035


class TestRecordedPsSize:
    @ALL
    def test_ps_leaves_out_the_full_attention_cache(self, row: Row) -> None:
        """``/api/ps`` size is every logged buffer but the first KV line of an SWA model, to the byte."""
        first_kv_line = parsed(row["kv_buffer_lines_mib"][0]) if row["kv_swa_mib"] else 0
        assert row["ps_size_bytes"] == allocated_bytes(row) - first_kv_line

    @ALL
    def test_unreported_bytes(self, row: Row) -> None:
        """``ps_unreported_bytes`` names exactly what ``/api/ps`` left out of each load."""
        unreported = ps_unreported_bytes(estimate_for(row))
        missing = allocated_bytes(row) - row["ps_size_bytes"]
        assert printed(unreported) == printed(missing)

    def test_faithful_before_0_30(self) -> None:
        """Before 0.30 ``size`` was Ollama's own estimate: nothing to add back."""
        result = estimate(model_facts("gemma3-270m"), 8192, version=(0, 24, 0))
        assert ps_unreported_bytes(result, version=(0, 24, 0)) == 0


def learn(model: str, parallel: int, contexts: tuple[int, ...], *, correct: bool) -> Calibration:
    """A calibration fed the recorded ``/api/ps`` sizes, with or without the known omission."""
    calibration = Calibration()
    for row in rows(model):
        if row["num_parallel"] != parallel or row["kv_cache_type"] != "f16" or row["num_ctx"] not in contexts:
            continue
        result = estimate_for(row)
        unreported = ps_unreported_bytes(result) if correct else 0
        calibration = calibration.observe(
            row["num_ctx"], result.raw_bytes, row["ps_size_bytes"], unreported_bytes=unreported
        )
    return calibration


def recorded(model: str, parallel: int, num_ctx: int) -> Row:
    """The f16 row for one model, slot count and context."""
    [row] = [
        row
        for row in rows(model)
        if (row["num_parallel"], row["num_ctx"], row["kv_cache_type"]) == (parallel, num_ctx, "f16")
    ]
    return row


class TestRecordedCalibration:
    @pytest.mark.parametrize("parallel", [1, 2, 3])
    def test_learns_the_allocation(self, parallel: int) -> None:
        """Fed two loads' corrected sizes, the calibration predicts the third allocation within 0.1%."""
        calibration = learn("gemma3-270m", parallel, (2048, 32768), correct=True)
        row = recorded("gemma3-270m", parallel, 8192)
        predicted = calibration.apply(estimate_for(row).raw_bytes)
        assert predicted == pytest.approx(allocated_bytes(row), rel=0.001)

    def test_ps_alone_would_promise_too_much(self) -> None:
        """Fitted to ``/api/ps`` alone, the line predicts 32768 x 3 slots over 30% below what it took."""
        calibration = learn("gemma3-270m", 3, (2048, 8192), correct=False)
        row = recorded("gemma3-270m", 3, 32768)
        predicted = calibration.apply(estimate_for(row).raw_bytes)
        assert predicted < 0.7 * allocated_bytes(row)
        corrected = learn("gemma3-270m", 3, (2048, 8192), correct=True).apply(estimate_for(row).raw_bytes)
        assert corrected == pytest.approx(allocated_bytes(row), rel=0.01)

    def test_faithful_model_needs_no_correction(self) -> None:
        """For llama-tiny (no SWA) ``/api/ps`` is the allocation, and the correction adds nothing."""
        assert learn("llama-tiny", 1, (2048, 8192), correct=True) == learn(
            "llama-tiny", 1, (2048, 8192), correct=False
        )
