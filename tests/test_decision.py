"""Decision and Context: frozen values that policies return new copies of."""

from __future__ import annotations

import dataclasses

import pytest

from policies import Context, Decision, FrozenJSON
from policies.duration import keep_alive_seconds, parse_go_duration


class TestDecision:
    def test_replace_returns_new_with_reason(self) -> None:
        """replace() leaves the original alone and appends the reason."""
        first = Decision(num_ctx=2048)
        second = first.replace(num_ctx=8192, reason="bigger")
        assert (first.num_ctx, first.reasons) == (2048, ())
        assert (second.num_ctx, second.reasons) == (8192, ("bigger",))

    def test_frozen(self) -> None:
        """Policies cannot mutate a decision in place."""
        with pytest.raises(dataclasses.FrozenInstanceError):
            Decision().num_ctx = 1  # type: ignore[misc]

    def test_replace_can_clear(self) -> None:
        """None removes a value, so Ollama's own default applies."""
        assert Decision(num_ctx=1, keep_alive="5m").replace(num_ctx=None, keep_alive=None) == Decision()

    @pytest.mark.parametrize("bad", [0, -5, "8192", 8192.0, True])
    def test_replace_checks_num_ctx(self, bad: object) -> None:
        """A value Ollama would refuse is the policy's error, not the client's."""
        with pytest.raises((TypeError, ValueError)):
            Decision().replace(num_ctx=bad)  # type: ignore[arg-type]

    def test_replace_checks_keep_alive(self) -> None:
        """A bare numeric string is a 400 in Ollama, so it is refused here."""
        with pytest.raises(ValueError, match="invalid duration '300'"):
            Decision().replace(keep_alive="300")

    def test_replace_checks_the_reason(self) -> None:
        """A reason that is not text is the policy's error."""
        with pytest.raises(TypeError, match="reasons must be strings"):
            Decision().replace(reason=42)  # type: ignore[arg-type]

    def test_replace_is_the_decision_the_constructor_makes(self) -> None:
        """What ``replace`` makes without checking again equals, field for field, the decision
        made and checked whole; a rejection is carried over."""
        first = Decision(num_ctx=4096, keep_alive="5m", reasons=("a",), outcomes=("fit",))
        second = first.replace(keep_alive=300, reason="b", outcome="kept")
        assert second == Decision(num_ctx=4096, keep_alive=300, reasons=("a", "b"), outcomes=("fit", "kept"))
        assert type(second) is Decision and second.outcome == "kept"
        assert first.reject("no").replace(num_ctx=1).rejection == "no"
        with pytest.raises(dataclasses.FrozenInstanceError):
            second.num_ctx = 1  # type: ignore[misc]

    def test_reject(self) -> None:
        """reject() carries the client's message."""
        rejected = Decision().reject("too long")
        assert rejected.rejected and rejected.rejection == "too long"
        assert not Decision().rejected


class TestDurations:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400), (300, 300), (2.5, 2.5), ("0", 0)],
    )
    def test_parse(self, value: object, seconds: float) -> None:
        """Numbers are seconds; strings follow Go's ParseDuration."""
        assert keep_alive_seconds(value) == pytest.approx(seconds)

    @pytest.mark.parametrize("value", [-1, "-1m", -0.5])
    def test_negative_is_forever(self, value: object) -> None:
        """Any negative keep_alive keeps the model loaded forever."""
        assert keep_alive_seconds(value) == float("inf")

    @pytest.mark.parametrize("text", ["300", "", "5 minutes", "m", "1d"])
    def test_invalid(self, text: str) -> None:
        """What Go refuses is refused."""
        with pytest.raises(ValueError):
            parse_go_duration(text)


class TestContext:
    def test_body_is_read_only_all_the_way_down(self) -> None:
        """Nested objects are views and arrays are tuples: a policy cannot edit the request."""
        body = {"messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": 1}}
        ctx = Context(endpoint="chat", model_name="m", body=FrozenJSON(body))
        assert ctx.body["messages"][0]["content"] == "hi"
        with pytest.raises(TypeError):
            ctx.body["options"]["num_ctx"] = 2  # type: ignore[index]
        assert isinstance(ctx.body["messages"], tuple)
        assert dict(ctx.body["options"]) == {"num_ctx": 1}
