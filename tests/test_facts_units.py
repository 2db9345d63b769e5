"""Facts gathered off the request path, unit by unit: token estimates, /api/ps parsing,
calibration persistence."""

from __future__ import annotations

import json
from pathlib import Path

from structlog.testing import capture_logs

from proxy.facts.calibration import CalibrationBook, calibration_key
from proxy.facts.ollama import parse_loaded
from proxy.facts.tokens import DEFAULT_CHARS_PER_TOKEN, TokenEstimator
from proxy.request.prompt import IMAGE_TOKENS, TOKENS_PER_MESSAGE, PromptSize, measure

PS_CPU = [  # v0.32.15 on a CPU-only host (ps.txt)
    {
        "name": "gemma3-270m:latest",
        "model": "gemma3-270m:latest",
        "size": 287246908,
        "digest": "38c4",
        "expires_at": "2026-11-25T12:33:53.910050018Z",
        "size_vram": 0,
        "context_length": 4096,
    },
]


class TestMeasure:
    def test_generate_counts_prompt_system_suffix_images_context(self) -> None:
        """Text fields count as characters; images and a generate context as known tokens."""
        size = measure(
            "generate",
            {"prompt": "abcd", "system": "ef", "suffix": "g", "images": ["x", "y"], "context": [1, 2, 3]},
        )
        assert size == PromptSize(chars=7, fixed_tokens=2 * IMAGE_TOKENS + 3)

    def test_chat_counts_messages_and_tools(self) -> None:
        """Message contents, thinking, tool calls and tool schemas count; each message adds template tokens."""
        body = {
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "", "thinking": "hm"},
            ],
            "tools": [{"type": "function"}],
        }
        size = measure("chat", body)
        assert size.chars == 5 + 2 + len(json.dumps(body["tools"]))
        assert size.fixed_tokens == 2 * TOKENS_PER_MESSAGE

    def test_odd_shapes_count_nothing(self) -> None:
        """Non-list messages or non-string contents are ignored rather than failing the request."""
        assert measure("chat", {"messages": "nope"}) == PromptSize(0, 0)
        assert measure("chat", {"messages": [None, {"content": 3}]}).chars == 0


class TestTokenEstimator:
    def test_conservative_default(self) -> None:
        """Before any answer, 3 chars per token: more tokens than typical English text."""
        estimator = TokenEstimator()
        assert estimator.estimate("m", PromptSize(chars=3000, fixed_tokens=10)) == 1010
        assert estimator.chars_per_token("m") == DEFAULT_CHARS_PER_TOKEN

    def test_learns_from_prompt_eval_count(self) -> None:
        """Ollama's counts move the ratio towards what the model's tokenizer really does."""
        estimator = TokenEstimator()
        size = PromptSize(chars=4000, fixed_tokens=0)
        estimator.learn("m", size, 1000, counts_cached=True)
        assert estimator.chars_per_token("m") == 4.0
        estimator.learn("m", size, 800, counts_cached=True)  # 5.0 observed, weighted 0.3
        assert estimator.chars_per_token("m") == 4.3
        assert estimator.chars_per_token("other") == DEFAULT_CHARS_PER_TOKEN

    def test_old_engine_only_grows_more_conservative(self) -> None:
        """Before 0.30 the count omits cached tokens, so it may only lower the ratio."""
        estimator = TokenEstimator()
        size = PromptSize(chars=4000, fixed_tokens=0)
        estimator.learn("m", size, 500, counts_cached=False)  # 8 chars/token: cache hit, ignored upward
        assert estimator.chars_per_token("m") == DEFAULT_CHARS_PER_TOKEN
        estimator.learn("m", size, 2000, counts_cached=False)  # 2 chars/token: followed, weighted 0.3
        assert estimator.chars_per_token("m") == 3.0 + 0.3 * (2.0 - 3.0)

    def test_tiny_prompts_teach_nothing(self) -> None:
        """A few characters say nothing reliable about the ratio."""
        estimator = TokenEstimator()
        estimator.learn("m", PromptSize(chars=10, fixed_tokens=0), 9, counts_cached=True)
        assert estimator.chars_per_token("m") == DEFAULT_CHARS_PER_TOKEN


class TestParseLoaded:
    def test_cpu_host_is_not_a_spill(self) -> None:
        """size_vram 0 on a host without a GPU is CPU inference, never a spill."""
        [model] = parse_loaded(PS_CPU, gpu_host=False)
        assert (model.name, model.context_length, model.size_vram_bytes, model.spilled) == (
            "gemma3-270m:latest",
            4096,
            0,
            False,
        )

    def test_gpu_host_partial_offload_is_a_spill(self) -> None:
        """On a GPU host, size_vram below size means layers run from system RAM."""
        entry = {**PS_CPU[0], "size_vram": 100}
        assert parse_loaded([entry], gpu_host=True)[0].spilled
        assert not parse_loaded([{**PS_CPU[0], "size_vram": PS_CPU[0]["size"]}], gpu_host=True)[0].spilled

    def test_junk_is_skipped(self) -> None:
        """Entries without a name, or a non-list, yield nothing instead of an exception."""
        assert parse_loaded([{"size": 1}, "x"], gpu_host=True) == ()
        assert parse_loaded(None, gpu_host=True) == ()


class TestCalibrationBook:
    def test_persists_across_restarts(self, tmp_path: Path) -> None:
        """What one process learnt, the next one reads back from the state directory."""
        path = tmp_path / "calibration.json"
        key = calibration_key("sha256:abc", 1, "f16", "llama-server")
        book = CalibrationBook(path)
        assert book.observe(key, 8192, 1000, 1100)
        assert not book.observe(key, 8192, 1000, 1100)  # the same load seen again by a later poll
        book.save()
        again = CalibrationBook(path).get(key)
        assert again is not None and again.apply(1000) == 1100

    def test_the_key_separates_what_changes_an_allocation(self) -> None:
        """A load on CUDA, with flash attention off or split over two GPUs allocates other compute
        buffers than the CPU backend: each learns its own correction, none borrows another's."""
        keys = {
            calibration_key("sha256:abc", 1, "f16", "llama-server"),
            calibration_key("sha256:abc", 1, "f16", "llama-server", "cuda"),
            calibration_key("sha256:abc", 1, "f16", "llama-server", "cuda", flash_attention=False),
            calibration_key("sha256:abc", 1, "f16", "llama-server", "cuda", gpu_count=2),
            calibration_key("sha256:abc", 1, "f16", "legacy", "cuda", gpu_count=2),
        }
        assert len(keys) == 5
        assert calibration_key("d", 3, "q8_0", "llama-server", "rocm", gpu_count=2) == (
            "d|p3|q8_0|llama-server|rocm|fa|g2|m3"
        )

    def test_unreadable_file_starts_afresh(self, tmp_path: Path) -> None:
        """A corrupt calibration file is logged and ignored, never fatal."""
        path = tmp_path / "calibration.json"
        path.write_text("{not json")
        with capture_logs() as logs:
            book = CalibrationBook(path)
        assert book.get("x") is None
        assert [e["event"] for e in logs] == ["calibration_unreadable"]
