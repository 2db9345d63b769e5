"""Ollama's own rules (policies/ollama.py), held to its source and to the v0.33.0-rc2 recordings.

The recorded facts cited here are in ollama-transcripts/v0.33.0-rc2/ (docs/ollama-rules.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from policies.ollama import (
    DEFAULT_NUM_BATCH,
    PromptFate,
    PromptOutcome,
    RunnerOptions,
    automatic_num_batch,
    batch_surcharge_bytes,
    context_shift_prompt_limit,
    default_num_ctx,
    legacy_graph_bytes,
    loaded_num_ctx,
    max_loaded_models,
    needs_reload,
    num_parallel,
    predict_server_vram,
    preflight_evicts,
    prompt_fate,
    runner_options,
    vram_default_num_ctx,
)

MIB = 1 << 20
GIB = 1 << 30
V0_33 = (0, 33, 0)
V0_24 = (0, 24, 0)


class TestVramDefaultNumCtx:
    @pytest.mark.parametrize(
        ("total_vram_bytes", "expected"),
        [
            (0, 4096),  # a CPU-only host: recorded total_vram="0 B" default_num_ctx=4096
            (8 * GIB, 4096),
            (23 * GIB - 1, 4096),
            (23 * GIB, 32768),
            (47 * GIB - 1, 32768),
            (47 * GIB, 262144),
            ((24 * GIB, 24 * GIB), 262144),  # tiers go by the sum over GPUs
            ((), 4096),
        ],
    )
    def test_tiers(self, total_vram_bytes: int | tuple[int, ...], expected: int) -> None:
        """47 GiB and more get 262144, 23 GiB and more 32768, anything less 4096."""
        assert vram_default_num_ctx(total_vram_bytes) == expected

    def test_overhead_is_subtracted_per_gpu(self) -> None:
        """OLLAMA_GPU_OVERHEAD comes off every GPU before the sum is compared."""
        assert vram_default_num_ctx((24 * GIB, 24 * GIB), gpu_overhead_bytes=GIB) == 32768

    def test_overhead_above_a_gpu_wraps(self) -> None:
        """Go's uint64 subtraction wraps, so an overhead larger than the GPU lands in the top tier."""
        assert vram_default_num_ctx(8 * GIB, gpu_overhead_bytes=9 * GIB) == 262144

    @pytest.mark.parametrize(
        ("version", "expected"),
        [((0, 15, 5), 32768), ((0, 15, 4), 4096), ((0, 6, 7), 4096), ((0, 6, 6), 2048), ((0, 0, 0), 32768)],
    )
    def test_versions(self, version: tuple[int, int, int], expected: int) -> None:
        """Tiers from 0.15.5; a flat 4096 from 0.6.7; 2048 before; a dev build is the newest."""
        assert vram_default_num_ctx(24 * GIB, version=version) == expected


class TestDefaultNumCtx:
    def test_cpu_host(self) -> None:
        """With no GPU and no setting, a request without num_ctx loads 4096 (reload_d part 1)."""
        assert default_num_ctx(V0_33, 0, trained_ctx=32768) == 4096

    def test_env_beats_tier(self) -> None:
        """OLLAMA_CONTEXT_LENGTH=8192 loads 8192 while the log still says 4096 (reload_d part 2)."""
        assert default_num_ctx(V0_33, 0, context_length_env=8192, trained_ctx=32768) == 8192

    def test_env_zero_is_unset(self) -> None:
        """OLLAMA_CONTEXT_LENGTH=0 leaves the VRAM tier in charge."""
        assert default_num_ctx(V0_33, 48 * GIB, context_length_env=0, trained_ctx=None) == 262144

    def test_modelfile_beats_env(self) -> None:
        """A Modelfile num_ctx is applied over the env's default options, so it wins."""
        assert default_num_ctx(V0_33, 0, context_length_env=8192, modelfile_num_ctx=2048) == 2048

    def test_clamped_to_trained(self) -> None:
        """The 262144 tier on a model trained for 32768 loads 32768."""
        assert default_num_ctx(V0_33, 80 * GIB, trained_ctx=32768) == 32768

    def test_vision_floor(self) -> None:
        """A vision model gets at least 2048 even from a smaller Modelfile value."""
        assert default_num_ctx(V0_33, 0, modelfile_num_ctx=1024, vision=True, trained_ctx=131072) == 2048


class TestLoadedNumCtx:
    @pytest.mark.parametrize(
        ("requested", "trained", "expected"),
        [
            (8192.5, 32768, 8192),  # error_numctx_float_8192_5.txt: -c 8192
            (1, 32768, 4),  # numctx_1.txt, ps_after_numctx_1.txt: context_length 4
            (0, 32768, 4),
            (-5, 32768, 4),
            (1e30, 32768, 4),  # error_numctx_1e30.txt: -c 4 (amd64's int64 conversion)
            (32768, 8192, 8192),  # llama-tiny asked for 32768: -c 8192
            (40000, None, 40000),
            (-7.9, None, 4),
        ],
    )
    def test_recorded(self, requested: float, trained: int | None, expected: int) -> None:
        """Floats truncate, anything under 4 becomes 4, and the trained length caps it."""
        assert loaded_num_ctx(requested, trained) == expected

    def test_arm64_saturates(self) -> None:
        """Where Go saturates the conversion, 1e30 becomes MaxInt64 and clamps to the trained length."""
        assert loaded_num_ctx(1e30, 32768, saturating_float_conversion=True) == 32768

    def test_vision_floor_is_clamped(self) -> None:
        """The vision floor is raised before the trained clamp, which still has the last word."""
        assert loaded_num_ctx(512, 1024, vision=True) == 1024
        assert loaded_num_ctx(512, 8192, vision=True) == 2048

    def test_no_vision_floor_before_0_30(self) -> None:
        """The vision floor was read in 0.30+'s scheduler and is not applied to older versions."""
        assert loaded_num_ctx(512, 8192, vision=True, version=V0_24) == 512

    @pytest.mark.parametrize("value", ["8192", True, None])
    def test_wrong_type(self, value: Any) -> None:
        """A string or bool is refused with Ollama's own message (error_numctx_string.txt: 500)."""
        with pytest.raises(ValueError, match='option "num_ctx" must be of type integer'):
            loaded_num_ctx(value, 32768)


def served(
    options: dict[str, Any] | None = None, modelfile: dict[str, Any] | None = None, **kwargs: Any
) -> RunnerOptions:
    """What Ollama 0.33 on the recording host (CPU, default tier 4096) resolves for gemma3-270m."""
    kwargs.setdefault("server_default_num_ctx", 4096)
    kwargs.setdefault("trained_ctx", 32768)
    kwargs.setdefault("architecture", "gemma3")
    return runner_options(options, modelfile, **kwargs)


class TestRunnerOptions:
    def test_automatic(self) -> None:
        """No num_ctx anywhere: the server default, marked automatic, and an automatic batch."""
        assert served({"num_predict": 2}) == RunnerOptions(num_ctx=4096, num_ctx_auto=True)

    def test_request_beats_modelfile(self) -> None:
        """An explicit options.num_ctx overrides the Modelfile's (reload_e step 7)."""
        got = served({"num_ctx": 2048}, {"num_ctx": 8192})
        assert (got.num_ctx, got.num_ctx_auto) == (2048, False)

    def test_modelfile_is_not_automatic(self) -> None:
        """A Modelfile value is explicit: it compares by value."""
        got = served({}, {"num_ctx": 8192})
        assert (got.num_ctx, got.num_ctx_auto) == (8192, False)

    def test_env_is_not_automatic(self) -> None:
        """With OLLAMA_CONTEXT_LENGTH set nothing is automatic (usesAutomaticNumCtx)."""
        got = served({}, context_length_env=8192)
        assert (got.num_ctx, got.num_ctx_auto) == (8192, False)

    def test_null_is_named_but_skipped(self) -> None:
        """A JSON null keeps the default value yet, being present, makes it explicit."""
        got = served({"num_ctx": None, "num_batch": None})
        assert got == RunnerOptions(num_ctx=4096, num_ctx_auto=False, num_batch=512, num_batch_auto=False)

    def test_runner_options_read(self) -> None:
        """Every load-time option is read, floats truncated; sampling options are ignored."""
        got = served(
            {"num_batch": 256.9, "num_gpu": 20, "main_gpu": 1, "use_mmap": False, "num_thread": 8, "top_k": 5}
        )
        assert got == RunnerOptions(
            num_ctx=4096,
            num_ctx_auto=True,
            num_batch=256,
            num_batch_auto=False,
            num_gpu=20,
            main_gpu=1,
            use_mmap=False,
            num_thread=8,
        )

    def test_embedding_batch(self) -> None:
        """An embedding model's batch defaults to min(2048, num_ctx) and is not automatic."""
        got = served({"num_ctx": 1024}, embedding=True)
        assert (got.num_batch, got.num_batch_auto) == (1024, False)

    @pytest.mark.parametrize(
        ("architecture", "shift", "expected"),
        [("gemma3", None, True), ("deepseek2", None, False), ("gemma3", False, False)],
    )
    def test_context_shift(self, architecture: str, shift: bool | None, expected: bool) -> None:
        """Context shift is on unless the request says no or the model is deepseek2."""
        assert served({}, architecture=architecture, shift=shift).context_shift is expected

    def test_clamp_only_from_0_30(self) -> None:
        """The trained clamp belongs to 0.30+'s needsReload; older Ollama kept the asked value."""
        assert served({"num_ctx": 65536}).num_ctx == 32768
        assert served({"num_ctx": 65536}, version=V0_24).num_ctx == 65536

    def test_bad_mmap(self) -> None:
        """use_mmap must be a bool."""
        with pytest.raises(ValueError, match="use_mmap"):
            served({"use_mmap": "no"})


# (request options, Modelfile options, runner started) per recorded step of gemma3-270m's blob,
# from the summaries of reload_a/c/e_*.txt (default env) and reload_d part 2 (OLLAMA_CONTEXT_LENGTH=8192).
RELOAD_A = (
    ({"num_ctx": 2048}, {}, True),
    ({"num_ctx": 8192}, {}, True),
    ({}, {}, True),
    ({"num_ctx": 2048}, {}, True),
    ({"num_ctx": 2048}, {}, False),
)
RELOAD_C = (
    ({"num_ctx": 8192}, {}, True),
    ({}, {}, True),  # /v1/chat/completions carries no num_ctx
    ({"num_ctx": 8192}, {}, True),
    ({}, {}, True),  # /v1/messages
    ({}, {}, False),  # /v1/responses
    ({}, {}, False),  # /v1/completions
    ({}, {}, False),  # /api/chat, num_ctx omitted
    ({}, {}, False),  # /v1/chat/completions
)
RELOAD_E = (
    ({}, {}, True),
    ({}, {}, False),  # gemma3-270m-b: same blob, same automatic context
    ({}, {}, False),
    ({}, {"num_ctx": 8192}, True),  # gemma3-270m-8k: same blob, PARAMETER num_ctx 8192
    ({}, {"num_ctx": 8192}, False),  # its /v1/chat/completions
    ({}, {"num_ctx": 8192}, False),  # its /v1/messages
    ({"num_ctx": 2048}, {"num_ctx": 8192}, True),
    ({}, {"num_ctx": 8192}, True),  # /v1 reloads back to the Modelfile's 8192
)
RELOAD_D_ENV_8192 = (
    ({}, {}, True),
    ({}, {}, False),
    ({"num_ctx": 2048}, {}, True),
    ({}, {}, True),
    ({}, {"num_ctx": 8192}, False),  # gemma3-270m-8k matches the env's 8192
)


class TestNeedsReload:
    @pytest.mark.parametrize(
        ("loaded", "wanted", "expected"),
        [
            (served({"num_ctx": 2048}), served({"num_ctx": 8192}), True),
            (served({"num_ctx": 2048}), served({"num_ctx": 2048}), False),
            (served({"num_ctx": 8192}), served({}), True),  # omitted means the 4096 default
            (served({}), served({"num_ctx": 4096}), False),  # the values match
            (
                served({}, context_length_env=8192),
                served({}, {"num_ctx": 8192}, context_length_env=8192),
                False,
            ),
        ],
    )
    def test_num_ctx(self, loaded: RunnerOptions, wanted: RunnerOptions, expected: bool) -> None:
        """Any change of the effective context reloads; the same value does not."""
        assert needs_reload(loaded, wanted, V0_33) is expected

    def test_automatic_values_compare_equal(self) -> None:
        """Automatic against automatic is equal whatever the values, for num_ctx and num_batch."""
        loaded = dataclasses.replace(served({}), num_ctx=32768, num_batch=1024)
        assert needs_reload(loaded, served({}), V0_33) is False

    def test_explicit_batch_against_loaded_automatic(self) -> None:
        """An explicit num_batch compares with the batch the runner really got."""
        loaded = dataclasses.replace(served({"num_ctx": 8192}), num_batch=1024)
        assert needs_reload(loaded, served({"num_ctx": 8192, "num_batch": 1024}), V0_33) is False
        assert needs_reload(loaded, served({"num_ctx": 8192, "num_batch": 512}), V0_33) is True

    def test_wanted_clamped_to_trained(self) -> None:
        """Asking a loaded 8192-trained model for more than 8192 does not reload it."""
        loaded = served({"num_ctx": 8192}, trained_ctx=8192)
        wanted = dataclasses.replace(loaded, num_ctx=32768)
        assert needs_reload(loaded, wanted, V0_33, trained_ctx=8192) is False

    def test_num_gpu(self) -> None:
        """A wanted num_gpu < 0 ignores the loaded one; an explicit one differs from a loaded -1."""
        loaded = served({"num_ctx": 2048, "num_gpu": 20})
        assert needs_reload(loaded, served({"num_ctx": 2048}), V0_33) is False
        assert (
            needs_reload(served({"num_ctx": 2048}), served({"num_ctx": 2048, "num_gpu": 20}), V0_33) is True
        )

    def test_use_mmap(self) -> None:
        """An unset use_mmap matches one the scheduler chose; an explicit other value does not."""
        loaded = dataclasses.replace(served({}), use_mmap=False, use_mmap_auto=True)
        assert needs_reload(loaded, served({}), V0_33) is False
        assert needs_reload(loaded, served({"use_mmap": True}), V0_33) is True

    def test_shift(self) -> None:
        """A different resolved context shift reloads (it is a launch flag)."""
        assert needs_reload(served({}), served({}, shift=False), V0_33) is True

    def test_before_0_30_raw(self) -> None:
        """Before 0.30 the struct was compared as it was: automatic batches differ, shift is ignored."""
        loaded = dataclasses.replace(served({}), num_batch=1024)
        assert needs_reload(loaded, served({}), V0_24) is True
        assert needs_reload(served({}), served({}, shift=False), V0_24) is False

    @pytest.mark.parametrize(
        ("steps", "env"),
        [(RELOAD_A, None), (RELOAD_C, None), (RELOAD_E, None), (RELOAD_D_ENV_8192, 8192)],
        ids=["reload_a", "reload_c", "reload_e", "reload_d_part2"],
    )
    def test_recorded_sequences(
        self, steps: tuple[tuple[dict[str, Any], dict[str, Any], bool], ...], env: int | None
    ) -> None:
        """Replaying each recorded sequence predicts exactly the steps that started a llama-server."""
        loaded: RunnerOptions | None = None
        predicted = []
        for options, modelfile, _ in steps:
            wanted = served(options, modelfile, context_length_env=env)
            reload = loaded is None or needs_reload(loaded, wanted, V0_33, trained_ctx=32768)
            predicted.append(reload)
            if reload:
                loaded = wanted
        assert predicted == [started for *_, started in steps]


class TestNumParallel:
    @pytest.mark.parametrize(
        ("architecture", "capabilities", "configured", "expected"),
        [
            ("gemma3", ("completion",), 3, 3),
            ("gemma3", ("completion",), 0, 1),
            ("gemma3", (), 2, 2),  # capabilities unknown: not taken as embedding-only
            ("bert", ("embedding",), 4, 1),
            ("qwen3vl", ("completion", "vision"), 4, 1),
            ("lfm2", ("completion",), 4, 1),
            ("nemotron_h_moe", ("completion",), 4, 1),
            (None, ("completion",), 2, 2),
        ],
    )
    def test_slots(
        self, architecture: str | None, capabilities: tuple[str, ...], configured: int, expected: int
    ) -> None:
        """max(OLLAMA_NUM_PARALLEL, 1), or 1 for models without completion and listed architectures."""
        assert num_parallel(architecture, capabilities, configured) == expected


class TestMaxLoadedModels:
    @pytest.mark.parametrize(
        ("configured", "gpus", "expected"), [(0, 0, 3), (0, 1, 3), (0, 4, 12), (2, 4, 2)]
    )
    def test_automatic(self, configured: int, gpus: int, expected: int) -> None:
        """0 is automatic: three per GPU, three on a CPU-only host; a set value is kept."""
        assert max_loaded_models(configured, gpus) == expected


class TestPromptFate:
    def test_recorded_generate_cut(self) -> None:
        """609 tokens at num_ctx 256 evaluate 131 (truncate_true/default: WARN limit=131 keep=5)."""
        assert prompt_fate("/api/generate", 609, 256) == PromptFate(PromptOutcome.CUT, 200, 131)

    def test_recorded_num_ctx_4(self) -> None:
        """A 10-token prompt at the 4-token minimum keeps 3 (numctx_1.txt: limit=3 keep=3 new=3)."""
        assert prompt_fate("generate", 10, 4).evaluated_tokens == 3

    @pytest.mark.parametrize("endpoint", ["generate", "chat"])
    def test_recorded_truncate_false(self, endpoint: str) -> None:
        """truncate false hands the prompt to llama-server, which answers 400 (truncate_false_*.txt)."""
        fate = prompt_fate(endpoint, 609, 256, truncate=False)
        assert (fate.outcome, fate.status, fate.rejected_by) == (PromptOutcome.REJECTED, 400, "llama-server")

    def test_truncate_false_that_fits(self) -> None:
        """A prompt below the slot size goes through whole even with truncate false."""
        assert prompt_fate("generate", 255, 256, truncate=False) == PromptFate(PromptOutcome.FITS, 200, 255)

    def test_no_shift_rejects(self) -> None:
        """With context shift off, Ollama itself refuses the prompt."""
        fate = prompt_fate("generate", 609, 256, shift=False)
        assert (fate.status, fate.rejected_by) == (400, "ollama")

    def test_fits_up_to_num_ctx_minus_one(self) -> None:
        """num_ctx - 1 tokens fit; one more is cut."""
        assert prompt_fate("generate", 255, 256).outcome is PromptOutcome.FITS
        assert prompt_fate("generate", 256, 256).outcome is PromptOutcome.CUT

    def test_num_keep(self) -> None:
        """A larger num_keep keeps more of the start, so less of the window is freed."""
        assert prompt_fate("generate", 1000, 256, num_keep=100).evaluated_tokens == 256 - (256 - 101) // 2
        assert (
            prompt_fate("generate", 1000, 256, num_keep=100, adds_bos=False).evaluated_tokens
            == 256 - (256 - 100) // 2
        )

    def test_chat_drops_oldest_non_system(self) -> None:
        """Chat drops messages from the front, keeps the system message, and then fits."""
        messages = [("system", 50), ("user", 300), ("assistant", 300), ("user", 100)]
        assert prompt_fate("chat", 760, 512, messages=messages) == PromptFate(
            PromptOutcome.MESSAGES_DROPPED, 200, 460, dropped_messages=1
        )
        assert prompt_fate("chat", 760, 256, messages=messages) == PromptFate(
            PromptOutcome.MESSAGES_DROPPED, 200, 160, dropped_messages=2
        )

    def test_chat_last_message_is_cut(self) -> None:
        """An oversized last message is kept and then cut like a generate prompt."""
        fate = prompt_fate("chat", 609, 256, messages=[("user", 600)])
        assert fate == PromptFate(PromptOutcome.CUT, 200, 131)

    def test_chat_without_truncate_drops_nothing(self) -> None:
        """truncate false keeps every message."""
        fate = prompt_fate("chat", 760, 512, truncate=False, messages=[("user", 300), ("user", 450)])
        assert (fate.dropped_messages, fate.status) == (0, 400)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"endpoint": "embed", "prompt_tokens": 1, "num_ctx": 8}, "endpoint"),
            ({"endpoint": "chat", "prompt_tokens": -1, "num_ctx": 8}, "prompt_tokens"),
            (
                {"endpoint": "chat", "prompt_tokens": 5, "num_ctx": 8, "messages": [("user", 9)]},
                "more tokens",
            ),
        ],
    )
    def test_nonsense(self, kwargs: dict[str, Any], message: str) -> None:
        """Impossible inputs are refused with what is wrong."""
        with pytest.raises(ValueError, match=message):
            prompt_fate(**kwargs)


class TestContextShiftPromptLimit:
    @pytest.mark.parametrize(
        ("num_ctx", "keep", "expected"), [(256, 5, 131), (4, 3, 3), (1, 0, 0), (8, 100, 7)]
    )
    def test_limit(self, num_ctx: int, keep: int, expected: int) -> None:
        """num_ctx - max((num_ctx - keep) / 2, 1), keep clamped to num_ctx - 1."""
        assert context_shift_prompt_limit(num_ctx, keep) == expected


class TestPredictServerVram:
    def test_formula(self) -> None:
        """File size + 2 x layers x kv_heads x (embedding / heads) x ctx x 2 (gemma3:27b: 81.4 GiB of KV)."""
        assert (
            predict_server_vram(17_396_936_446, 62, 16, 5376, 32, 131072) == 17_396_936_446 + 87_375_740_928
        )

    def test_zero_kv_heads_count_as_one(self) -> None:
        """A per-layer array with zeros (recurrent layers) has minimum 0, which Ollama takes as 1."""
        assert predict_server_vram(0, 2, 0, 256, 4, 10) == 2 * 2 * 1 * 64 * 10 * 2

    def test_zero_heads_give_no_cache(self) -> None:
        """Without a head count the head dimension, and so the cache term, is 0."""
        assert predict_server_vram(100, 2, 1, 256, 0, 10) == 100


class TestBatchSurcharge:
    @pytest.mark.parametrize(
        ("num_batch", "expected"), [(4096, 2 * GIB), (2048, 2 * GIB), (1024, 768 * MIB), (512, 0), (256, 0)]
    )
    def test_surcharge(self, num_batch: int, expected: int) -> None:
        """2 GiB from a 2048 batch, 768 MiB from 1024, nothing below."""
        assert batch_surcharge_bytes(num_batch) == expected

    def test_embedding_pays_none(self) -> None:
        """Models without completion pay no surcharge."""
        assert batch_surcharge_bytes(2048, completion=False) == 0


class TestAutomaticNumBatch:
    @pytest.mark.parametrize(
        ("ctx_total", "expected"), [(4096, 512), (6144, 1024), (32768, 1024), (65536, 2048)]
    )
    def test_by_context(self, ctx_total: int, expected: int) -> None:
        """-ub follows -c: 512 up to 4096, 1024 to 32768, 2048 above (memory-matrix.txt)."""
        assert automatic_num_batch(ctx_total) == expected

    def test_headroom(self) -> None:
        """2048 needs the prediction within 60% of available memory, 1024 within 75%."""
        assert automatic_num_batch(65536, 5 * GIB, 10 * GIB) == 2048
        assert automatic_num_batch(65536, 5 * GIB, 8 * GIB) == 1024  # 62.5%

    def test_surcharge_must_fit(self) -> None:
        """Within 60% is not enough when the 2 GiB surcharge does not fit under the 80% line."""
        # 3 GiB of 5 GiB is 60%, but 3 + 2 > 4 GiB; 1024's 768 MiB fits under it.
        assert automatic_num_batch(65536, 3 * GIB, 5 * GIB) == 1024

    def test_over_80_percent(self) -> None:
        """A prediction over 80% of available memory steps all the way down to 512."""
        assert automatic_num_batch(65536, 9 * GIB, 10 * GIB) == 512

    def test_cuda_without_flash_attention(self) -> None:
        """On CUDA without flash attention: 512, or 256 above 4096 on a GPU of 8 GiB or less."""
        assert automatic_num_batch(65536, cuda_without_flash_attention=True) == 512
        assert (
            automatic_num_batch(65536, cuda_without_flash_attention=True, cuda_gpu_at_most_8gib=True) == 256
        )
        assert automatic_num_batch(4096, cuda_without_flash_attention=True, cuda_gpu_at_most_8gib=True) == 512

    def test_legacy(self) -> None:
        """Before 0.30 the batch was always 512."""
        assert automatic_num_batch(131072, version=V0_24) == DEFAULT_NUM_BATCH


class TestPreflightEvicts:
    def test_threshold(self) -> None:
        """Evicts when prediction plus surcharge exceeds 80% of free memory, and not at exactly 80%."""
        assert preflight_evicts(8 * GIB - 768 * MIB, 1024, 10 * GIB, True) is False
        assert preflight_evicts(8 * GIB - 768 * MIB + 1, 1024, 10 * GIB, True) is True

    def test_surcharge_counts(self) -> None:
        """The same prediction fits with a 512 batch and evicts with 2048."""
        assert preflight_evicts(7 * GIB, 512, 10 * GIB, 1) is False
        assert preflight_evicts(7 * GIB, 2048, 10 * GIB, 1) is True

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"others_loaded": False},
            {"others_loaded": 0},
            {"on_gpu": False},
            {"explicit_partial_offload": True},
        ],
    )
    def test_only_with_others_on_gpu(self, kwargs: dict[str, Any]) -> None:
        """No other model, a CPU load or an explicit partial offload never evicts by prediction."""
        arguments: dict[str, Any] = {"others_loaded": True, **kwargs}
        assert preflight_evicts(100 * GIB, 2048, GIB, **arguments) is False


class TestLegacyGraphBytes:
    def test_llama(self) -> None:
        """llama3.1:8b at 8192, batch 512, full offload: 560 MiB (docs/ollama-rules.md §5 worked example)."""
        got = legacy_graph_bytes(
            "llama",
            embedding_length=4096,
            head_count_max=32,
            head_count_kv_min=8,
            vocab_size=128256,
            ctx_total=8192,
            num_batch=512,
            kv_total_bytes=GIB,
        )
        assert got == 2048 * (1 + 4 * 4096 + 8192 * 33)
        assert round(got / MIB) == 560

    def test_fallback(self) -> None:
        """Other architectures: (heads / kv heads) x KV total / 6."""
        got = legacy_graph_bytes(
            "qwen2",
            embedding_length=4096,
            head_count_max=32,
            head_count_kv_min=8,
            vocab_size=1,
            ctx_total=1,
            num_batch=1,
            kv_total_bytes=6 * GIB,
        )
        assert got == 4 * GIB
