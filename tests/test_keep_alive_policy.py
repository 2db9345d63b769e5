"""The keep_alive policy: pins beat everything, pressure shortens long values, default fills gaps."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from policies.context import Context
from policies.decision import Decision
from policies.keep_alive import KeepAlivePolicy
from proxy.request.parse import parse_request
from tests.builders import ctx, gpu, start, unknown_gpu


def decide(context: Context, **options: Any) -> Decision:
    """Run a fresh ``KeepAlivePolicy(**options)`` from the chain's starting decision."""
    return KeepAlivePolicy(**options).decide(context, start(context))


FULL = {"gpu": gpu(free_gib=2.0)}
"""A GPU with 2 GiB free: under the default 4 GiB pressure threshold."""

PRESSURE = {"under_pressure": "2m"}


class TestOptions:
    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"default": "300"}, "keep_alive: default: invalid duration '300'"),
            (
                {"default": True},
                "keep_alive: default: keep_alive must be a number of seconds or a duration string, not True",
            ),
            (
                {"pin": "gemma3:*"},
                "keep_alive: pin must be a list of model name patterns such as ['gemma3:*'], not 'gemma3:*'",
            ),
            (
                {"pin": ["gemma3:*", ""]},
                "keep_alive: each pin must be a model name or glob such as 'gemma3:*', not ''",
            ),
            ({"pin": [3]}, "keep_alive: each pin must be a model name or glob such as 'gemma3:*', not 3"),
            ({"under_pressure": "2 minutes"}, "keep_alive: under_pressure: invalid duration '2 minutes'"),
            (
                {"under_pressure": -1},
                "keep_alive: under_pressure must be a finite duration such as '2m', not -1 (forever)",
            ),
            (
                {"under_pressure": "2m", "pressure_below": "4G"},
                "keep_alive: pressure_below: unknown size unit 'G' in '4G': use B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal)",
            ),
        ],
    )
    def test_bad_options_are_refused_with_one_exact_message(
        self, options: dict[str, Any], message: str
    ) -> None:
        """Each bad option raises ValueError naming the option and what Ollama would accept."""
        with pytest.raises(ValueError) as raised:
            KeepAlivePolicy(**options)
        assert str(raised.value) == message

    @pytest.mark.parametrize(
        ("pressure_below", "expected_bytes"),
        [("4GiB", 4 * 1024**3), ("512 MB", 512_000_000), (1_000_000, 1_000_000)],
    )
    def test_pressure_threshold_takes_sizes_and_bytes(
        self, pressure_below: str | int, expected_bytes: int
    ) -> None:
        """pressure_below is a size string or a number of bytes."""
        assert KeepAlivePolicy(pressure_below=pressure_below).pressure_below_bytes == expected_bytes

    def test_defaults_change_nothing(self) -> None:
        """With no option set the policy is a no-op: same decision, no reason."""
        context = ctx(client_keep_alive="10m", **FULL)
        decision = start(context)
        assert KeepAlivePolicy().decide(context, decision) is decision

    def test_invalid_client_value_is_left_for_ollama_to_refuse(self) -> None:
        """A bare "300" is an Ollama 400: such a request is not governed at all (so no policy,
        pinning included, can hide Ollama's answer), and no decision can carry the value."""
        body = b'{"model": "gemma3:27b", "prompt": "hi", "keep_alive": "300"}'
        assert parse_request("generate", body) is None
        with pytest.raises(ValueError):
            dataclasses.replace(Decision(), keep_alive="300")

    async def test_is_an_async_policy(self) -> None:
        """Awaiting the policy gives the same decision as ``decide``."""
        context = ctx()
        policy = KeepAlivePolicy(default="30m")
        assert await policy(context, start(context)) == policy.decide(context, start(context))


class TestPin:
    """A pinned model stays loaded forever, whatever the client or the GPU says."""

    def test_pin_overrides_the_client(self) -> None:
        """A client asking 5m for a pinned model gets -1."""
        decision = decide(ctx(client_keep_alive="5m"), pin=["gemma3:*"])
        assert decision.keep_alive == -1
        assert decision.reasons == (
            "keep_alive[pin]: gemma3:27b matches pin 'gemma3:*'; keep_alive -1 (forever) instead of 5m",
        )

    def test_pin_overrides_a_client_unload(self) -> None:
        """Even keep_alive 0 (unload now) does not unload a pinned model."""
        assert decide(ctx(client_keep_alive=0), pin=["gemma3:27b"]).keep_alive == -1

    def test_pin_beats_pressure_and_default(self) -> None:
        """Pinning is the operator's explicit choice, so it wins over every other rule."""
        decision = decide(ctx(client_keep_alive=None, **FULL), pin=["gemma3:*"], default="30m", **PRESSURE)
        assert decision.keep_alive == -1
        assert decision.reasons[0].endswith("instead of unset")

    @pytest.mark.parametrize(
        ("model_name", "pattern"),
        [
            ("llama3.1", "llama3.1:latest"),
            ("llama3.1:latest", "llama3.1"),
            ("llama3.1", "llama3.1:*"),
            ("Gemma3:27B", "gemma3:27b"),
            ("registry.local:5000/team/qwen3:8b", "*/qwen3:*"),
            ("registry.local:5000/team/qwen3", "*/qwen3:latest"),
        ],
    )
    def test_names_match_as_ollama_reads_them(self, model_name: str, pattern: str) -> None:
        """A missing tag means ``latest``, case does not matter, and globs work."""
        assert KeepAlivePolicy(pin=[pattern]).pinned_by(model_name) == pattern

    @pytest.mark.parametrize(
        ("model_name", "pattern"),
        [("gemma3:4b", "gemma3:27b"), ("gemma3n:e4b", "gemma3:*"), ("qwen3:8b", "qwen3")],
    )
    def test_other_models_are_not_pinned(self, model_name: str, pattern: str) -> None:
        """Only the named models are pinned; ``qwen3`` means ``qwen3:latest``, not every tag."""
        assert KeepAlivePolicy(pin=[pattern]).pinned_by(model_name) is None

    def test_first_matching_pin_is_named(self) -> None:
        """The reason names the pattern that matched."""
        assert KeepAlivePolicy(pin=["llama*", "gemma3:*", "*"]).pinned_by("gemma3:27b") == "gemma3:*"

    def test_already_forever_is_left_alone(self) -> None:
        """A client already asking forever needs no change and gets no reason."""
        context = ctx(client_keep_alive="-1m")
        decision = start(context)
        assert KeepAlivePolicy(pin=["gemma3:*"]).decide(context, decision) is decision


class TestPressure:
    """Below pressure_below free VRAM, values longer than under_pressure are shortened."""

    def test_longer_client_value_is_shortened(self) -> None:
        """30m becomes 2m when only 2 GiB are free."""
        decision = decide(ctx(client_keep_alive="30m", **FULL), **PRESSURE)
        assert decision.keep_alive == "2m"
        assert decision.reasons == (
            "keep_alive[pressure]: 2.0 GiB free on GPU, below 4.0 GiB; keep_alive 2m instead of 30m",
        )

    def test_forever_is_shortened(self) -> None:
        """A client's -1 on a model that is not pinned yields under pressure too."""
        assert decide(ctx(client_keep_alive=-1, **FULL), **PRESSURE).keep_alive == "2m"

    @pytest.mark.parametrize("client_keep_alive", [0, 60, "90s", "2m"])
    def test_shorter_client_value_is_kept(self, client_keep_alive: int | str) -> None:
        """A client already freeing the GPU as soon (or sooner) is left alone, without a reason."""
        decision = decide(ctx(client_keep_alive=client_keep_alive, **FULL), **PRESSURE)
        assert (decision.keep_alive, decision.reasons) == (client_keep_alive, ())

    def test_unset_counts_as_longer(self) -> None:
        """Without a value Ollama applies OLLAMA_KEEP_ALIVE (5m), so under pressure 2m is sent."""
        decision = decide(ctx(client_keep_alive=None, **FULL), **PRESSURE)
        assert decision.keep_alive == "2m"
        assert decision.reasons[0].endswith("keep_alive 2m instead of unset")

    def test_pressure_beats_a_longer_default(self) -> None:
        """A default of 1h yields to pressure, and the reason says it was the default."""
        decision = decide(ctx(client_keep_alive=None, **FULL), default="1h", **PRESSURE)
        assert decision.keep_alive == "2m"
        assert decision.reasons[0].endswith("keep_alive 2m instead of default 1h")

    def test_shorter_default_still_applies(self) -> None:
        """A default already shorter than under_pressure is sent as the default."""
        decision = decide(ctx(client_keep_alive=None, **FULL), default="1m", **PRESSURE)
        assert decision.keep_alive == "1m"
        assert decision.reasons == ("keep_alive[default]: none asked; keep_alive 1m",)

    def test_no_pressure_with_enough_free_memory(self) -> None:
        """With 6 GiB free the client's 30m stands."""
        decision = decide(ctx(client_keep_alive="30m", gpu=gpu(free_gib=6.0)), **PRESSURE)
        assert (decision.keep_alive, decision.reasons) == ("30m", ())

    def test_threshold_is_exclusive(self) -> None:
        """Exactly pressure_below free is not pressure."""
        decision = decide(ctx(client_keep_alive="30m", gpu=gpu(free_gib=4.0)), **PRESSURE)
        assert decision.keep_alive == "30m"

    def test_custom_threshold_in_bytes(self) -> None:
        """pressure_below as an int of bytes works the same."""
        context = ctx(client_keep_alive="30m", gpu=gpu(free_gib=6.0))
        assert decide(context, pressure_below=8 * 1024**3, **PRESSURE).keep_alive == "2m"

    @pytest.mark.parametrize("snapshot", [None, unknown_gpu()])
    def test_unknown_gpu_is_no_pressure(self, snapshot: Any) -> None:
        """Without a GPU reading nothing is shortened."""
        decision = decide(ctx(client_keep_alive="30m", gpu=snapshot), **PRESSURE)
        assert decision.keep_alive == "30m"

    def test_without_under_pressure_the_threshold_does_nothing(self) -> None:
        """pressure_below alone changes nothing."""
        decision = decide(ctx(client_keep_alive="30m", **FULL), pressure_below="8GiB")
        assert decision.keep_alive == "30m"


class TestDefault:
    """default fills in a keep_alive when none was asked."""

    def test_applies_when_none_asked(self) -> None:
        """No client value: the default is sent."""
        decision = decide(ctx(client_keep_alive=None), default="30m")
        assert decision.keep_alive == "30m"
        assert decision.reasons == ("keep_alive[default]: none asked; keep_alive 30m",)

    @pytest.mark.parametrize("client_keep_alive", [0, "5m", -1])
    def test_client_value_is_kept(self, client_keep_alive: int | str) -> None:
        """A client's own value, 0 included, wins over the default."""
        decision = decide(ctx(client_keep_alive=client_keep_alive), default="30m")
        assert (decision.keep_alive, decision.reasons) == (client_keep_alive, ())

    def test_numeric_default(self) -> None:
        """A default in seconds is sent as a number, which Ollama reads as seconds."""
        assert decide(ctx(), default=3600).keep_alive == 3600

    def test_earlier_policy_value_counts_as_asked(self) -> None:
        """A keep_alive set by an earlier policy is not overwritten by the default."""
        decision = KeepAlivePolicy(default="30m").decide(ctx(), Decision(keep_alive="10m"))
        assert decision.keep_alive == "10m"


class TestRestore:
    def test_a_shortened_value_is_restored_once_the_pressure_is_over(self) -> None:
        """Ollama remembers the pressure value; the next request without one gets ``restore``,
        once, and later requests are left alone."""
        policy = KeepAlivePolicy(under_pressure="2m", pressure_below="4GiB", restore="5m")
        tight, roomy = ctx(gpu=gpu(free_gib=1.0)), ctx(gpu=gpu(free_gib=20.0))
        assert policy.decide(tight, start(tight)).keep_alive == "2m"
        restored = policy.decide(roomy, start(roomy))
        assert (restored.keep_alive, restored.reasons[0][:18]) == ("5m", "keep_alive[restore")
        assert policy.decide(roomy, start(roomy)).keep_alive is None

    def test_nothing_is_sent_without_pressure(self) -> None:
        """A model never shortened keeps whatever Ollama applies (OLLAMA_KEEP_ALIVE)."""
        policy = KeepAlivePolicy(under_pressure="2m", restore="5m")
        roomy = ctx(gpu=gpu(free_gib=20.0))
        assert policy.decide(roomy, start(roomy)).keep_alive is None

    def test_a_client_value_is_never_replaced_by_restore(self) -> None:
        """The client's own value after the pressure wins, and ends the restore."""
        policy = KeepAlivePolicy(under_pressure="2m", pressure_below="4GiB", restore="5m")
        tight = ctx(gpu=gpu(free_gib=1.0))
        policy.decide(tight, start(tight))
        asked = ctx(gpu=gpu(free_gib=20.0), client_keep_alive="1h")
        assert policy.decide(asked, start(asked)).keep_alive == "1h"
        later = ctx(gpu=gpu(free_gib=20.0))
        assert policy.decide(later, start(later)).keep_alive is None
