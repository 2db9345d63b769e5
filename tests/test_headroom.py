"""The headroom policy: need, fit, sticky, overflow, fail-open, each step checked on plain data."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from policies.context import Context, GpuDevice, GpuSnapshot
from policies.decision import Decision
from policies.headroom import OUTCOMES, Headroom
from policies.memory import (
    GIB,
    Calibration,
    effective_parallel,
    estimate,
    estimate_bytes,
    format_bytes,
    largest_fitting_ctx,
)
from policies.scheduler import Budget, Candidate, OllamaServer, Resident, predict
from tests.builders import ctx, facts, gpu, loaded, start, unknown_gpu, with_model
from tests.test_memory import gemma3_270m, llama31_8b
from tests.test_scheduler import resident, tiny


def decide(context: Context, **options: Any) -> Decision:
    """Run a fresh ``Headroom(**options)`` from the chain's starting decision."""
    return Headroom(**options).decide(context, start(context))


def budget_of(context: Context) -> int:
    """Free VRAM plus this model's own VRAM minus the reserve: what the policy may fill."""
    assert context.gpu is not None and context.gpu.free_bytes is not None
    own = context.loaded.size_vram_bytes if context.loaded is not None else 0
    return context.gpu.free_bytes + own - context.gpu.reserve_bytes


def largest(context: Context, budget: int | None = None, **options: Any) -> int | None:
    """What ``memory.largest_fitting_ctx`` says for this context, with the policy's defaults."""
    assert context.model is not None
    return largest_fitting_ctx(
        context.model,
        budget_of(context) if budget is None else budget,
        step=options.get("step", 2048),
        min_ctx=options.get("min_ctx", 2048),
        max_ctx=options.get("max_ctx"),
        parallel=effective_parallel(context.model, context.num_parallel),
        kv_cache_type=context.kv_cache_type,
        version=context.ollama_version,
        calibration=context.calibration,
    )


def footprint(context: Context, num_ctx: int) -> int:
    """Estimated bytes of this context's model loaded at ``num_ctx``."""
    assert context.model is not None
    return estimate_bytes(
        context.model,
        num_ctx,
        effective_parallel(context.model, context.num_parallel),
        context.kv_cache_type,
        version=context.ollama_version,
        calibration=context.calibration,
    )


ROOMY = {"gpu": gpu(free_gib=70.0, total_gib=80.0)}
"""An H100 with room for gemma3:27b at its whole trained context, so only *need* matters."""


class TestOptions:
    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"min_ctx": 0}, "headroom: min_ctx must be a positive integer, not 0"),
            ({"min_ctx": True}, "headroom: min_ctx must be a positive integer, not True"),
            ({"max_ctx": "8k"}, "headroom: max_ctx must be a positive integer, not '8k'"),
            ({"step": 0}, "headroom: step must be a positive integer, not 0"),
            ({"step": -256}, "headroom: step must be a positive integer, not -256"),
            ({"reply_tokens": -1}, "headroom: reply_tokens must be a non-negative integer, not -1"),
            (
                {"min_ctx": 8192, "max_ctx": 4096},
                "headroom: min_ctx (8192) must not exceed max_ctx (4096)",
            ),
            (
                {"on_overflow": "drop"},
                "headroom: on_overflow must be one of spill, reject, truncate, not 'drop'",
            ),
        ],
    )
    def test_bad_options_are_refused_with_one_exact_message(
        self, options: dict[str, Any], message: str
    ) -> None:
        """Each bad option raises ValueError saying which option and what is allowed."""
        with pytest.raises(ValueError) as raised:
            Headroom(**options)
        assert str(raised.value) == message

    def test_defaults(self) -> None:
        """The defaults are 2048-token buckets from 2048, 1024 reply tokens, spill on overflow."""
        policy = Headroom()
        assert (policy.min_ctx, policy.max_ctx, policy.step, policy.reply_tokens, policy.on_overflow) == (
            2048,
            None,
            2048,
            1024,
            "spill",
        )

    async def test_is_an_async_policy(self) -> None:
        """Awaiting the policy gives the same decision as ``decide``."""
        context = ctx(client_num_ctx=131072, prompt_tokens=5000)
        policy = Headroom()
        assert await policy(context, start(context)) == policy.decide(context, start(context))


class TestNeed:
    """Step 1: prompt plus reply room, rounded up to a bucket, at least min_ctx."""

    def test_prompt_plus_reply_tokens_rounded_up(self) -> None:
        """3000 prompt + 1024 reply = 4024 tokens, rounded up to the 4096 bucket."""
        decision = decide(ctx(client_num_ctx=2048, prompt_tokens=3000, **ROOMY))
        assert decision.num_ctx == 4096
        assert "prompt needs 4096 (~3000 + 1024 reply)" in decision.reasons[0]

    def test_positive_num_predict_replaces_reply_tokens(self) -> None:
        """A client that asks for 4000 reply tokens gets room for them: 7000 -> 8192."""
        decision = decide(ctx(client_num_ctx=2048, prompt_tokens=3000, num_predict=4000, **ROOMY))
        assert decision.num_ctx == 8192

    @pytest.mark.parametrize("num_predict", [-1, -2, 0])
    def test_unbounded_num_predict_uses_reply_tokens(self, num_predict: int) -> None:
        """num_predict -1 (until the window), -2 (fill it) or 0 fall back to reply_tokens."""
        decision = decide(
            ctx(client_num_ctx=2048, prompt_tokens=3000, num_predict=num_predict, **ROOMY), reply_tokens=5000
        )
        assert decision.num_ctx == 8192

    def test_at_least_min_ctx(self) -> None:
        """A tiny prompt still gets min_ctx."""
        decision = decide(ctx(client_num_ctx=512, prompt_tokens=10, **ROOMY), min_ctx=4096)
        assert decision.num_ctx == 4096

    def test_unknown_prompt_size_needs_reply_room_only(self) -> None:
        """Without a token estimate only the reply room counts, and the reason shows '?'."""
        decision = decide(ctx(client_num_ctx=1024, prompt_tokens=None, **ROOMY))
        assert decision.num_ctx == 2048
        assert "prompt needs 2048 (? + 1024 reply)" in decision.reasons[0]

    @pytest.mark.parametrize("client_num_ctx", [None, 2048, 131072])
    @pytest.mark.parametrize(
        ("prompts", "reply_tokens", "expected_need"),
        [((3000, 3100), 512, 4096), ((2500, 3000), 1024, 4096), ((6500, 7000), 1024, 8192)],
    )
    def test_bucket_rounding_is_stable(
        self, client_num_ctx: int | None, prompts: tuple[int, int], reply_tokens: int, expected_need: int
    ) -> None:
        """Prompts a few hundred tokens apart in one bucket get the same num_ctx: no reload between them."""
        first, second = (
            decide(ctx(client_num_ctx=client_num_ctx, prompt_tokens=tokens), reply_tokens=reply_tokens)
            for tokens in prompts
        )
        assert first.num_ctx == second.num_ctx
        assert f"prompt needs {expected_need} " in first.reasons[0]
        assert f"prompt needs {expected_need} " in second.reasons[0]

    def test_need_rounded_past_an_odd_trained_length_is_capped(self) -> None:
        """A model trained on 5000 tokens serves 4924 needed tokens at 5000, not as an overflow to 6144."""
        context = ctx(client_num_ctx=None, prompt_tokens=3900, model=facts(context_length=5000), **ROOMY)
        decision = decide(context)
        assert decision.num_ctx == 5000
        assert decision.outcome is None


class TestFit:
    """Step 4: the largest bucket that fits in free VRAM + this model's VRAM - reserve (probed with
    ``fill=True``, which asks for it when the client names no num_ctx)."""

    @pytest.mark.parametrize("num_parallel", [1, 3])
    def test_seed_scenario_picks_the_largest_bucket_that_fits(self, num_parallel: int) -> None:
        """gemma3:27b on 24 GiB asked for 131072 gets the largest 2048-bucket whose estimate fits."""
        context = ctx(client_num_ctx=131072, prompt_tokens=5000, num_parallel=num_parallel)
        chosen = decide(context).num_ctx
        assert chosen is not None and 6144 <= chosen < 131072
        assert chosen % 2048 == 0
        assert footprint(context, chosen) <= budget_of(context)
        assert footprint(context, chosen + 2048) > budget_of(context)

    def test_more_parallel_slots_fit_less(self) -> None:
        """The KV cache scales with OLLAMA_NUM_PARALLEL, so three slots get a smaller context."""
        one = decide(ctx(client_num_ctx=131072, prompt_tokens=5000, num_parallel=1)).num_ctx
        three = decide(ctx(client_num_ctx=131072, prompt_tokens=5000, num_parallel=3)).num_ctx
        assert one is not None and three is not None and three < one

    def test_single_slot_architectures_ignore_num_parallel(self) -> None:
        """Ollama loads some architectures with one slot whatever OLLAMA_NUM_PARALLEL says."""
        mllama = facts(architecture="mllama")
        at_one = decide(ctx(client_num_ctx=None, model=mllama, num_parallel=1), fill=True).num_ctx
        at_four = decide(ctx(client_num_ctx=None, model=mllama, num_parallel=4), fill=True).num_ctx
        assert at_one == at_four

    def test_memory_this_model_holds_counts_as_free(self) -> None:
        """A reload frees the model's own VRAM, so 6 GiB free + 18 GiB held fits like 24 GiB free."""
        held = ctx(
            client_num_ctx=None,
            prompt_tokens=5000,
            gpu=gpu(free_gib=6.0),
            loaded=loaded(context_length=2048, size_gib=18.0),
        )
        empty = ctx(client_num_ctx=None, prompt_tokens=5000, gpu=gpu(free_gib=24.0))
        assert decide(held, fill=True).num_ctx == decide(empty, fill=True).num_ctx == largest(held)
        assert "6.0 GiB free + 18.0 GiB held by this model" in decide(held, fill=True).reasons[0]

    def test_reserve_is_kept_free(self) -> None:
        """A larger reserve leaves less to fill."""
        small = ctx(client_num_ctx=None, gpu=gpu(reserve_gib=0.5))
        large = ctx(client_num_ctx=None, gpu=gpu(reserve_gib=3.0))
        small_ctx, large_ctx = decide(small, fill=True).num_ctx, decide(large, fill=True).num_ctx
        assert small_ctx == largest(small) and large_ctx == largest(large)
        assert small_ctx is not None and large_ctx is not None and large_ctx < small_ctx

    def test_calibration_is_applied(self) -> None:
        """A calibration saying loads take 1.5 GiB more than estimated shrinks the fit to match."""
        calibration = Calibration(offset_bytes=1.5 * GIB)
        plain = ctx(client_num_ctx=None)
        calibrated = ctx(client_num_ctx=None, calibration=calibration)
        plain_ctx, calibrated_ctx = decide(plain, fill=True).num_ctx, decide(calibrated, fill=True).num_ctx
        assert calibrated_ctx == largest(calibrated)
        assert plain_ctx is not None and calibrated_ctx is not None and calibrated_ctx < plain_ctx

    def test_quantised_kv_cache_fits_more(self) -> None:
        """q8_0 halves the KV cache, so more context fits."""
        f16 = decide(ctx(client_num_ctx=None), fill=True).num_ctx
        q8 = decide(ctx(client_num_ctx=None, kv_cache_type="q8_0"), fill=True).num_ctx
        assert f16 is not None and q8 is not None and q8 > f16

    def test_max_ctx_caps_the_fit(self) -> None:
        """With room for everything, max_ctx is the most that is sent, and the reason says why."""
        decision = decide(ctx(client_num_ctx=None, **ROOMY), max_ctx=32768, fill=True)
        assert decision.num_ctx == 32768
        assert "32768 fit (max_ctx cap)" in decision.reasons[0]

    def test_trained_length_caps_the_fit(self) -> None:
        """A client asking beyond the trained length gets the trained length."""
        decision = decide(ctx(client_num_ctx=262144, **ROOMY))
        assert decision.num_ctx == 131072
        assert "131072 fit (trained length cap)" in decision.reasons[0]

    @pytest.mark.parametrize("step", [2048, 256])
    def test_remembered_fits_agree_with_largest_fitting_ctx(self, step: int) -> None:
        """One policy instance, asked about many budgets in any order, answers exactly as memory does.

        With 256-token buckets there are more intervals than the policy remembers, so this also
        covers forgetting them.
        """
        policy = Headroom(step=step, fill=True)
        budgets_gib = [21.5, 17.0, 21.49, 30.0, 16.3, 21.5, 19.25, 45.0, 17.0, 25.0, 21.6, 16.0]
        budgets_gib += [16.5 + (i * 7919 % 1000) / 100 for i in range(200)]  # 16.5-26.5 GiB, shuffled
        for budget_gib in budgets_gib:
            context = ctx(client_num_ctx=None, gpu=gpu(free_gib=budget_gib + 1.0, total_gib=48.0))
            decision = policy.decide(context, start(context))
            expected = largest(context, step=step)
            if expected is None:
                assert decision.num_ctx == 2048 and decision.outcome == "overflow"
            else:
                assert decision.num_ctx == expected, budget_gib

    def test_fit_is_remembered(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A budget seen before is answered without estimating memory again (the chain's hot path)."""
        import policies.headroom as headroom_module

        calls = {"fit": 0, "estimate": 0}
        real_fit, real_estimate = headroom_module.largest_fitting_ctx, headroom_module.estimate_bytes

        def counting_fit(*args: Any, **kwargs: Any) -> Any:
            calls["fit"] += 1
            return real_fit(*args, **kwargs)

        def counting_estimate(*args: Any, **kwargs: Any) -> Any:
            calls["estimate"] += 1
            return real_estimate(*args, **kwargs)

        monkeypatch.setattr(headroom_module, "largest_fitting_ctx", counting_fit)
        monkeypatch.setattr(headroom_module, "estimate_bytes", counting_estimate)
        policy = Headroom()
        context = ctx(client_num_ctx=131072, prompt_tokens=5000)
        first = policy.decide(context, start(context))
        assert calls["fit"] == 1
        before = dict(calls)
        again = [policy.decide(context, start(context)) for _ in range(100)]
        assert calls == before
        assert {d.num_ctx for d in again} == {first.num_ctx}


class TestSticky:
    """Step 3: a model loaded fully on the GPU with enough context keeps it: no reload."""

    def test_alternating_clients_keep_the_loaded_context(self) -> None:
        """Clients asking 4096, 16384, 4096 all get 16384, the context already loaded."""
        chosen = []
        for client_num_ctx in (4096, 16384, 4096):
            context = ctx(
                client_num_ctx=client_num_ctx, prompt_tokens=1000, loaded=loaded(context_length=16384)
            )
            decision = decide(context)
            chosen.append(decision.num_ctx)
            assert decision.outcome == "sticky"
        assert chosen == [16384, 16384, 16384]

    def test_omitted_num_ctx_is_set_explicitly(self) -> None:
        """Ollama reloads when num_ctx is omitted after a load that set it, so sticky always sets it."""
        decision = decide(ctx(client_num_ctx=None, prompt_tokens=1000, loaded=loaded(context_length=16384)))
        assert decision.num_ctx == 16384

    def test_reason(self) -> None:
        """The reason says what was asked, what is loaded and that nothing reloads."""
        decision = decide(ctx(client_num_ctx=4096, prompt_tokens=3000, loaded=loaded(context_length=16384)))
        assert decision.reasons == (
            "headroom[sticky]: asked 4096, loaded at 16384 fully on GPU; "
            "prompt needs 4096 (~3000 + 1024 reply); keeping 16384 (no reload)",
        )

    def test_sticky_even_when_gpu_is_full(self) -> None:
        """A loaded model already fits; a full GPU (its own memory) is no reason to reload."""
        context = ctx(client_num_ctx=8192, prompt_tokens=1000, gpu=gpu(free_gib=0.2), loaded=loaded())
        assert decide(context).num_ctx == 16384

    def test_prompt_larger_than_loaded_context_reloads(self) -> None:
        """A prompt that does not fit the loaded context gets a larger one."""
        context = ctx(client_num_ctx=4096, prompt_tokens=20000, loaded=loaded(context_length=16384))
        decision = decide(context)
        assert decision.num_ctx == 22528
        assert decision.outcome is None

    def test_loaded_context_above_max_ctx_is_not_kept(self) -> None:
        """After max_ctx is lowered, a model loaded above it is reloaded within the cap."""
        context = ctx(client_num_ctx=None, loaded=loaded(context_length=65536, size_gib=22.0), **ROOMY)
        assert decide(context, max_ctx=32768, fill=True).num_ctx == 32768
        assert decide(context, max_ctx=32768).num_ctx == 2048  # what the prompt needs

    def test_unknown_loaded_context_is_not_sticky(self) -> None:
        """Ollama before 0.9.7 does not report the loaded context, so nothing is kept."""
        context = ctx(client_num_ctx=8192, prompt_tokens=1000, loaded=loaded(context_length=None))
        assert decide(context).num_ctx == 8192


class TestChoice:
    """Step 4: the value asked, or the fit when none, within [need, fit]."""

    def test_value_within_need_and_fit_is_kept(self) -> None:
        """A client asking 8192 for a 5000-token prompt, with room, gets 8192."""
        decision = decide(ctx(client_num_ctx=8192, prompt_tokens=5000))
        assert decision.num_ctx == 8192

    def test_no_value_gets_the_need_or_the_server_default(self) -> None:
        """A client that sets no num_ctx gets what its prompt needs or the server's default,
        whichever is larger: never inflated to everything that fits."""
        assert decide(ctx(client_num_ctx=None, prompt_tokens=5000)).num_ctx == 6144
        assert decide(ctx(client_num_ctx=None, prompt_tokens=5000, default_num_ctx=32768)).num_ctx == 32768
        assert decide(ctx(client_num_ctx=None, prompt_tokens=50_000, default_num_ctx=4096)).num_ctx == 51200

    def test_server_default_is_still_capped_by_the_fit(self) -> None:
        """A server default larger than fits (a big VRAM tier, OLLAMA_CONTEXT_LENGTH) is lowered."""
        context = ctx(client_num_ctx=None, prompt_tokens=5000, default_num_ctx=131072)
        assert decide(context).num_ctx == largest(context)

    def test_fill_gets_the_fit(self) -> None:
        """With ``fill``, a client that sets no num_ctx gets the largest that fits."""
        context = ctx(client_num_ctx=None, prompt_tokens=5000)
        assert decide(context, fill=True).num_ctx == largest(context)

    def test_value_above_fit_is_lowered(self) -> None:
        """A client asking 131072 on 24 GiB gets what fits."""
        context = ctx(client_num_ctx=131072, prompt_tokens=5000)
        assert decide(context).num_ctx == largest(context)

    def test_big_prompt_raises_the_client_value(self) -> None:
        """A 20000-token prompt with num_ctx 4096 would be truncated; it gets 22528 instead."""
        decision = decide(ctx(client_num_ctx=4096, prompt_tokens=20000))
        assert decision.num_ctx == 22528

    def test_earlier_policy_value_counts_as_asked(self) -> None:
        """The decision so far, not the raw client value, is what headroom adjusts."""
        context = ctx(client_num_ctx=131072, prompt_tokens=1000)
        decision = Headroom().decide(context, Decision(num_ctx=8192, reasons=("static: num_ctx 8192",)))
        assert decision.num_ctx == 8192
        assert decision.reasons[0] == "static: num_ctx 8192"

    def test_reason_has_the_figures(self) -> None:
        """The reason gives asked, fit, free, reserve, need and the result."""
        context = ctx(client_num_ctx=131072, prompt_tokens=5000)
        fit = largest(context)
        assert decide(context).reasons == (
            f"headroom: asked 131072, {fit} fit in 22.5 GiB free (reserve 1.0 GiB); "
            f"prompt needs 6144 (~5000 + 1024 reply); using {fit}",
        )

    def test_reason_names_parallel_slots(self) -> None:
        """With several slots the reason says so, since they multiply the KV cache."""
        assert "(reserve 1.0 GiB, parallel 3)" in decide(ctx(client_num_ctx=None, num_parallel=3)).reasons[0]
        # a test above (test_reason_has_the_figures) pins the whole line; this one only the slots


BIG_PROMPT = {"client_num_ctx": 8192, "prompt_tokens": 60000}
"""A 60000-token prompt (need 61440) on the seed GPU, where well under 61440 fits."""


class TestOverflow:
    """When need exceeds fit, on_overflow decides: spill, reject or truncate."""

    def test_spill_sends_need_and_says_overflow(self) -> None:
        """The default sends what the prompt needs and flags the outcome as overflow."""
        context = ctx(**BIG_PROMPT)
        fit = largest(context)
        decision = decide(context)
        assert fit is not None and fit < 61440
        assert decision.num_ctx == 61440
        assert decision.outcome == "overflow"
        assert decision.reasons == (
            f"headroom[overflow]: asked 8192, {fit} fit in 22.5 GiB free (reserve 1.0 GiB); "
            "prompt needs 61440 (~60000 + 1024 reply); using 61440, "
            "more than fits, part of the model will run from system RAM",
        )

    def test_reject_refuses_with_the_exact_message(self) -> None:
        """reject answers 400 with need and fit, and leaves num_ctx alone."""
        context = ctx(**BIG_PROMPT)
        fit = largest(context)
        decision = decide(context, on_overflow="reject")
        assert decision.rejection == (
            f"prompt needs ~61440 tokens of context; at most {fit} fit in free GPU memory"
        )
        assert decision.num_ctx == 8192
        assert decision.outcome == "reject"

    def test_truncate_sends_the_fit(self) -> None:
        """truncate sends what fits and says the prompt will be cut."""
        context = ctx(**BIG_PROMPT)
        decision = decide(context, on_overflow="truncate")
        assert decision.num_ctx == largest(context)
        assert decision.outcome == "truncate"
        assert decision.reasons[0].endswith(f"using {largest(context)}, Ollama will cut the prompt")

    @pytest.mark.parametrize(
        ("on_overflow", "num_ctx", "rejection"),
        [
            ("spill", 131072, None),
            ("truncate", 131072, None),
            ("reject", 8192, "prompt needs ~141312 tokens of context; gemma3:27b allows at most 131072"),
        ],
    )
    def test_prompt_beyond_the_trained_length(
        self, on_overflow: str, num_ctx: int, rejection: str | None
    ) -> None:
        """A prompt longer than the model can take is capped or refused, never sent above the cap."""
        context = ctx(client_num_ctx=8192, prompt_tokens=140000, **ROOMY)
        decision = decide(context, on_overflow=on_overflow)
        assert (decision.num_ctx, decision.rejection) == (num_ctx, rejection)

    def test_spill_beyond_max_ctx_is_capped(self) -> None:
        """max_ctx is a hard cap: an overflowing prompt gets max_ctx, and the reason says so."""
        decision = decide(ctx(client_num_ctx=8192, prompt_tokens=40000, **ROOMY), max_ctx=32768)
        assert decision.num_ctx == 32768
        assert decision.reasons[0].endswith(
            "using 32768, the prompt exceeds the max_ctx cap, Ollama will cut it"
        )

    @pytest.mark.parametrize(
        ("on_overflow", "num_ctx", "rejection"),
        [
            ("spill", 6144, None),
            ("truncate", 2048, None),
            ("reject", 4096, "prompt needs ~6144 tokens of context; at most 0 fit in free GPU memory"),
        ],
    )
    def test_weights_alone_do_not_fit(self, on_overflow: str, num_ctx: int, rejection: str | None) -> None:
        """With less free memory than the weights, nothing fits: spill, min_ctx or a refusal."""
        context = ctx(client_num_ctx=4096, prompt_tokens=5000, gpu=gpu(free_gib=10.0))
        decision = decide(context, on_overflow=on_overflow)
        assert (decision.num_ctx, decision.rejection) == (num_ctx, rejection)
        assert "nothing fits in 10.0 GiB free" in decision.reasons[0]


class TestSpilledRefit:
    """Step 5: a loaded model that spills to system RAM is reloaded at a context that fits."""

    def test_spilled_model_is_reloaded_at_the_fit(self) -> None:
        """Loaded at 131072 with 10 GiB in RAM, it is reloaded at the largest context that fits."""
        context = ctx(
            client_num_ctx=131072,
            prompt_tokens=3000,
            gpu=gpu(free_gib=0.5),
            loaded=loaded(context_length=131072, size_gib=30.0, vram_gib=20.0),
        )
        decision = decide(context)
        fit = largest(context)
        assert fit is not None and decision.num_ctx == fit < 131072
        assert decision.reasons == (
            f"headroom[refit]: asked 131072, {fit} fit in 512.0 MiB free + 20.0 GiB held by this model "
            "(reserve 1.0 GiB); prompt needs 4096 (~3000 + 1024 reply); "
            f"loaded at 131072 with 10.0 GiB in system RAM; using {fit}",
        )

    def test_spilled_model_is_not_sticky_even_with_room_for_the_prompt(self) -> None:
        """A client asking the spilled context again still gets one that fits."""
        context = ctx(
            client_num_ctx=65536,
            prompt_tokens=1000,
            gpu=gpu(free_gib=0.5),
            loaded=loaded(context_length=65536, size_gib=28.0, vram_gib=21.0),
        )
        assert decide(context).num_ctx == largest(context)

    def test_spilled_flag_alone_counts(self) -> None:
        """The facts provider's spilled flag is trusted even when the sizes look equal."""
        context = ctx(client_num_ctx=8192, prompt_tokens=1000, loaded=loaded(spilled=True))
        assert decide(context).outcome == "refit"


class TestWithoutBudget:
    """With memory or model facts unknown, need, sticky and no truncation still govern; the
    decision is uncapped and says why."""

    def test_no_memory_source(self) -> None:
        """No memory snapshot at all: the client's larger value is kept, the reason says why."""
        decision = decide(ctx(client_num_ctx=131072, gpu=None))
        assert decision.num_ctx == 131072
        assert decision.reasons == (
            "headroom[unknown]: no memory budget (no memory source); asked 131072, "
            "prompt needs 2048 (? + 1024 reply); using 131072, uncapped",
        )

    def test_memory_read_failed(self) -> None:
        """A snapshot with no devices reports the source's error; an omitted num_ctx still gets
        the server default or the need, whichever is larger, so nothing is cut."""
        decision = decide(
            ctx(client_num_ctx=None, gpu=unknown_gpu(), prompt_tokens=10_000, default_num_ctx=4096)
        )
        assert decision.num_ctx == 12288
        assert decision.outcome == "unknown"
        assert decision.reasons == (
            "headroom[unknown]: no memory budget (NVML Shared Library Not Found); asked none, "
            "server default 4096, prompt needs 12288 (~10000 + 1024 reply); using 12288, uncapped",
        )

    def test_memory_unknown_without_error(self) -> None:
        """A snapshot with no devices and no error names its source."""
        decision = decide(ctx(client_num_ctx=4096, gpu=unknown_gpu(error=None, source="none")))
        assert decision.reasons[0].startswith("headroom[unknown]: no memory budget (no devices from none); ")

    def test_too_small_client_value_is_raised_without_budget(self) -> None:
        """A client's 2048 for a 10000-token prompt would be cut silently; it gets what it needs."""
        decision = decide(ctx(client_num_ctx=2048, gpu=None, prompt_tokens=10_000))
        assert decision.num_ctx == 12288

    def test_sticky_without_budget(self) -> None:
        """Alternating 2048 / 8192 / unset on a host whose memory is unknown: one context, no reload."""
        for client_num_ctx in (2048, 8192, None, 2048):
            context = ctx(
                client_num_ctx=client_num_ctx,
                gpu=None,
                prompt_tokens=100,
                loaded=loaded(context_length=2048, size_gib=0.3, vram_gib=0.0, spilled=False),
            )
            decision = decide(context)
            assert (decision.num_ctx, decision.outcome) == (2048, "sticky")

    def test_cpu_only_host_is_sticky(self) -> None:
        """On a CPU-only host size_vram is 0 for every loaded model: that is not a spill."""
        system = GpuSnapshot(
            source="system",
            kind="system",
            devices=(GpuDevice(0, "system memory", 24 * GIB, 20 * GIB, 4 * GIB),),
            reserve_bytes=GIB,
        )
        context = ctx(
            client_num_ctx=8192,
            gpu=system,
            prompt_tokens=100,
            loaded=loaded(context_length=2048, size_gib=0.3, vram_gib=0.0, spilled=False),
        )
        decision = decide(context)
        assert (decision.num_ctx, decision.outcome) == (2048, "sticky")
        assert "in system RAM" in decision.reasons[0]

    def test_no_model_facts(self) -> None:
        """A model /api/show did not describe: governed by need alone, uncapped."""
        decision = decide(ctx(client_num_ctx=4096, model=None))
        assert decision.num_ctx == 4096
        assert decision.reasons == (
            "headroom[unknown]: no facts about model 'gemma3:27b'; asked 4096, "
            "prompt needs 2048 (? + 1024 reply); using 4096, uncapped",
        )

    def test_incomplete_kv_facts(self) -> None:
        """A non-verbose /api/show blanks per-layer arrays; the estimate's error is passed on."""
        decision = decide(with_model(ctx(client_num_ctx=4096, prompt_tokens=1000), head_count_kv=None))
        assert decision.num_ctx == 4096
        assert decision.outcome == "unknown"
        assert "cannot estimate memory: model 'gemma3:27b': head_count_kv is unknown" in decision.reasons[0]

    def test_unknown_weights_size(self) -> None:
        """Without the /api/tags size there is no estimate either."""
        decision = decide(with_model(ctx(client_num_ctx=4096), weights_bytes=None))
        assert decision.num_ctx == 4096 and "weights_bytes is unknown" in decision.reasons[0]

    def test_unknown_cache_type(self) -> None:
        """An OLLAMA_KV_CACHE_TYPE the memory model does not know leaves the decision uncapped."""
        decision = decide(ctx(client_num_ctx=4096, kv_cache_type="turbo"))
        assert decision.num_ctx == 4096 and "unknown KV cache type 'turbo'" in decision.reasons[0]

    def test_unknown_trained_length_without_max_ctx(self) -> None:
        """Without a trained length or max_ctx there is no ceiling to search up to."""
        context = with_model(ctx(client_num_ctx=4096), context_length=None)
        decision = decide(context)
        assert decision.reasons == (
            "headroom[unknown]: model 'gemma3:27b': context_length is unknown and max_ctx is not set; "
            "asked 4096, prompt needs 2048 (? + 1024 reply); using 4096, uncapped",
        )

    def test_unknown_trained_length_with_max_ctx(self) -> None:
        """max_ctx alone is a ceiling, so the policy can still size the context."""
        context = with_model(ctx(client_num_ctx=None, **ROOMY), context_length=None)
        assert decide(context, max_ctx=32768, fill=True).num_ctx == 32768


class TestOutcome:
    @pytest.mark.parametrize(
        ("context", "options", "outcome"),
        [
            (ctx(client_num_ctx=8192, prompt_tokens=300_000), {}, "overflow"),
            (ctx(loaded=loaded(context_length=16384), prompt_tokens=1000), {}, "sticky"),
            (ctx(gpu=unknown_gpu()), {}, "unknown"),
            (ctx(client_num_ctx=131072), {}, None),
            (ctx(prompt_tokens=300_000), {"on_overflow": "reject"}, "reject"),
            (ctx(prompt_tokens=300_000), {"on_overflow": "truncate"}, "truncate"),
        ],
    )
    def test_outcome_is_data_and_matches_the_reason(
        self, context: Context, options: dict[str, Any], outcome: str | None
    ) -> None:
        """Each path attaches its outcome as data; the reason's bracketed token says the same."""
        decision = decide(context, **options)
        assert decision.outcome == outcome
        prefix = "headroom: " if outcome is None else f"headroom[{outcome}]: "
        assert decision.reasons[0].startswith(prefix)

    def test_every_outcome_is_a_token(self) -> None:
        """The documented tokens are exactly the outcomes."""
        assert set(OUTCOMES) == {
            "sticky",
            "refit",
            "overflow",
            "truncate",
            "reject",
            "unknown",
            "working_set",
            "evicts",
        }

    def test_format_bytes_matches_reason_figures(self) -> None:
        """Reasons use memory.format_bytes, so figures read the same across the proxy."""
        reason = decide(ctx(client_num_ctx=None, gpu=gpu(free_gib=14.2))).reasons[0]
        assert f"in {format_bytes(round(14.2 * GIB))} free" in reason


class TestReplyCap:
    def test_a_habitual_large_max_tokens_is_capped(self) -> None:
        """A coding agent's max_tokens 32000 reserves at most max_reply_tokens (8192) for the reply."""
        decision = decide(ctx(client_num_ctx=None, prompt_tokens=50_000, num_predict=32_000, gpu=None))
        assert decision.num_ctx == 59392  # 50000 + 8192, in 2048 buckets

    def test_the_cap_is_an_option(self) -> None:
        """max_reply_tokens raises or lowers the cap."""
        context = ctx(client_num_ctx=None, prompt_tokens=50_000, num_predict=32_000, gpu=None)
        assert decide(context, max_reply_tokens=32_000).num_ctx == 83968


class TestWorkingSet:
    """Step 6: Ollama's scheduler (``policies.scheduler``) is asked what each context does to the
    other loaded models; a context that keeps them all (and does not spill) wins over a larger one."""

    HELPERS = (
        resident(tiny("a"), 8192, keep_alive_s=600),
        resident(tiny("b"), 8192, keep_alive_s=60),  # the shorter keep_alive: Ollama unloads it first
    )

    def beside(self, *residents: Resident, total_gib: float, **overrides: Any) -> Context:
        """llama3.1:8b asked for ``client_num_ctx`` with ``residents`` loaded on one GPU."""
        held = sum(estimate(r.facts, 8192).total_bytes for r in residents if r.facts is not None)
        values: dict[str, Any] = {
            "model": llama31_8b(),
            "model_name": "llama3.1:8b",
            "body": {"model": "llama3.1:8b"},
            "client_num_ctx": 65536,
            "prompt_tokens": 48000,
            "gpu": gpu(free_gib=total_gib - held / GIB, total_gib=total_gib, reserve_gib=0.5),
            "residents": residents,
            "server": OllamaServer(),
        }
        values.update(overrides)
        return ctx(**values)

    def unloads(self, context: Context, num_ctx: int) -> tuple[str, ...]:
        """Whom Ollama unloads to load this context's model at ``num_ctx``."""
        assert context.model is not None and context.gpu is not None
        budget = Budget.from_snapshot(context.gpu)
        return predict(
            Candidate(context.model, num_ctx), context.residents, budget, OllamaServer()
        ).evicted_names

    def test_a_smaller_context_keeps_the_embedding_model_loaded(self) -> None:
        """131072 would make Ollama unload the embedding model; a smaller context that still holds
        the prompt keeps it, and the reason says both."""
        embedder = resident(gemma3_270m(), 8192)
        context = self.beside(embedder, total_gib=24.0, client_num_ctx=131072, prompt_tokens=3000)
        assert self.unloads(context, 131072) == ("gemma3-270m:latest",)
        decision = decide(context)
        assert decision.outcome == "working_set"
        assert decision.num_ctx is not None and 4096 <= decision.num_ctx < 131072
        assert self.unloads(context, decision.num_ctx) == ()
        assert self.unloads(context, decision.num_ctx + 2048) != ()  # the largest that keeps it
        assert "131072 would unload gemma3-270m:latest" in decision.reasons[0]
        assert f"{decision.num_ctx} keeps gemma3-270m:latest loaded" in decision.reasons[0]

    def test_without_the_servers_facts_the_scheduler_is_not_asked(self) -> None:
        """No ``server`` (the governor could not read Ollama): the decision is step 5's alone."""
        embedder = resident(gemma3_270m(), 8192)
        context = self.beside(embedder, total_gib=24.0, client_num_ctx=131072, prompt_tokens=3000)
        assert decide(dataclasses.replace(context, server=None)).num_ctx == 131072

    def test_nothing_else_loaded_changes_nothing(self) -> None:
        """With no other runner there is nobody to unload: the same decision as without the twin."""
        context = self.beside(total_gib=16.0)
        assert decide(context) == decide(dataclasses.replace(context, server=None))

    def test_when_all_cannot_stay_the_fewest_are_unloaded(self) -> None:
        """On 16 GiB no context that holds 48000 prompt tokens keeps both helpers; the largest
        that unloads only one wins over the larger one that unloads both."""
        context = self.beside(*self.HELPERS, total_gib=16.0)
        decision = decide(context)
        assert decision.outcome == "evicts"
        assert decision.num_ctx is not None and decision.num_ctx >= 49152
        assert self.unloads(context, decision.num_ctx) == ("b:latest",)
        assert self.unloads(context, decision.num_ctx + 2048) == ("b:latest", "a:latest")
        assert "Ollama will unload b:latest for it" in decision.reasons[0]

    def test_a_weight_of_zero_lets_a_model_go_for_a_larger_context(self) -> None:
        """``weights = {"a" = 0}``: unloading ``a`` costs nothing, so the largest context wins."""
        context = self.beside(*self.HELPERS, total_gib=16.0)
        decision = decide(context, weights={"a": 0, "b": 0})
        assert self.unloads(context, 57344) == ("b:latest", "a:latest")
        assert (decision.num_ctx, decision.outcome) == (57344, "evicts")

    @pytest.mark.parametrize(
        "options",
        [
            {"protect": ["a*"], "weights": {"a": 0, "b": 0}},
            {"weights": {"a": 2, "b": 0}},
            {"weights": {"llama3.1:*": 0.5, "a": 0.75, "b": 0}},
        ],
        ids=["protected", "heavier", "heavier-than-the-asker"],
    )
    def test_a_model_that_may_not_be_unloaded_is_kept_where_any_context_allows(
        self, options: dict[str, Any]
    ) -> None:
        """With both helpers free to go, 57344 (both unloaded) would win; a protected helper, or
        one weighing more than the model asking, is kept by the largest context that keeps it."""
        context = self.beside(*self.HELPERS, total_gib=16.0)
        decision = decide(context, **options)
        assert decision.num_ctx is not None and decision.num_ctx < 57344
        assert self.unloads(context, decision.num_ctx) == ("b:latest",)
        assert self.unloads(context, decision.num_ctx + 2048) == ("b:latest", "a:latest")

    def test_a_pinned_model_is_not_unloaded_for_a_larger_context(self) -> None:
        """A runner kept forever (keep_alive -1) counts as protected."""
        pinned = dataclasses.replace(self.HELPERS[0], keep_alive_s=math.inf)
        context = self.beside(pinned, self.HELPERS[1], total_gib=16.0)
        decision = decide(context, weights={"a": 0, "b": 0})
        assert decision.num_ctx is not None and decision.num_ctx < 57344
        assert self.unloads(context, decision.num_ctx) == ("b:latest",)

    def test_when_even_the_need_unloads_a_protected_model_the_reason_says_so(self) -> None:
        """A prompt of 56000 tokens needs a context at which Ollama unloads both; nothing smaller
        helps, so the context is the need's and the reason names the protected model."""
        context = self.beside(*self.HELPERS, total_gib=16.0, prompt_tokens=56000)
        decision = decide(context, protect=["a"])
        assert (decision.num_ctx, decision.outcome) == (57344, "evicts")
        assert (
            "Ollama will unload b:latest, a:latest for it: even 57344 does not fit beside a:latest"
            in (decision.reasons[0])
        )

    def test_when_every_context_unloads_a_heavier_model_the_fewest_go(self) -> None:
        """The asker weighs less than both helpers: no context is allowed, so the one unloading
        the least is sent and the reason names who should have stayed."""
        context = self.beside(*self.HELPERS, total_gib=16.0)
        decision = decide(context, weights={"llama3.1:*": 0.5})
        assert decision.num_ctx is not None and self.unloads(context, decision.num_ctx) == ("b:latest",)
        assert decision.reasons[0].endswith(
            f"Ollama will unload b:latest for it: even 49152 does not fit beside b:latest; "
            f"using {decision.num_ctx}"
        )

    def test_a_context_that_would_spill_is_never_chosen(self) -> None:
        """Whatever the weights, a spilling context loses to any that fits."""
        context = self.beside(*self.HELPERS, total_gib=16.0)
        decision = decide(context, weights={"a": 0, "b": 0})
        assert context.model is not None and context.gpu is not None
        budget = Budget.from_snapshot(context.gpu)
        assert decision.num_ctx is not None
        prediction = predict(Candidate(context.model, decision.num_ctx), context.residents, budget)
        assert prediction.action != "spill"

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            (
                {"protect": "nomic-*"},
                "headroom: protect must be a list of model globs such as ['nomic-*'], not 'nomic-*'",
            ),
            (
                {"protect": [""]},
                "headroom: protect must be a list of model globs such as ['nomic-*'], not ['']",
            ),
            ({"weights": {"a": -1}}, "headroom: weights['a'] must be a number of 0 or more, not -1"),
            ({"weights": {"a": True}}, "headroom: weights['a'] must be a number of 0 or more, not True"),
        ],
    )
    def test_bad_priorities_are_refused(self, options: dict[str, Any], message: str) -> None:
        """Each bad ``protect`` or ``weights`` raises ValueError with one exact message."""
        with pytest.raises(ValueError) as raised:
            Headroom(**options)
        assert str(raised.value) == message
