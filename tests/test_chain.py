"""The policy chain: a fold in config order, with one error boundary around every policy."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from policies import Context, Decision
from policies.static import Static
from proxy.govern.chain import run_chain
from proxy.govern.loader import LoadedPolicy


def ctx(**overrides: Any) -> Context:
    values: dict[str, Any] = {"endpoint": "chat", "model_name": "llama3.1:8b", "body": {}}
    values.update(overrides)
    return Context(**values)


def named(name: str, call: Any) -> LoadedPolicy:
    return LoadedPolicy(name=name, call=call)


async def set_ctx(value: int) -> Any:
    async def policy(c: Context, d: Decision) -> Decision:
        return d.replace(num_ctx=value, reason=f"set {value}")

    return policy


class TestFold:
    async def test_order_is_config_order(self) -> None:
        """Each policy sees the decision of the one before; the last word wins."""
        seen: list[int | None] = []

        async def record(c: Context, d: Decision) -> Decision:
            seen.append(d.num_ctx)
            return d

        chain = [named("a", await set_ctx(1024)), named("rec", record), named("b", await set_ctx(4096))]
        outcome = await run_chain(chain, ctx(), Decision(num_ctx=512), 1.0)
        assert seen == [1024]
        assert outcome.decision.num_ctx == 4096
        assert [(e.policy, e.fields, e.reason) for e in outcome.changes] == [
            ("a", ("num_ctx",), "set 1024"),
            ("b", ("num_ctx",), "set 4096"),
        ]

    async def test_plain_sync_function_is_accepted(self) -> None:
        """A policy that returns a Decision directly (not awaitable) works too."""
        outcome = await run_chain(
            [named("sync", lambda c, d: d.replace(keep_alive="1h"))], ctx(), Decision(), 1.0
        )
        assert outcome.decision.keep_alive == "1h"

    async def test_rejection_stops_the_chain(self) -> None:
        """After a rejection no further policy runs."""

        async def refuse(c: Context, d: Decision) -> Decision:
            return d.reject("no")

        outcome = await run_chain(
            [named("refuse", refuse), named("later", await set_ctx(1))], ctx(), Decision(), 1.0
        )
        assert outcome.decision.rejection == "no" and outcome.rejected_by == "refuse"
        assert outcome.decision.num_ctx is None

    async def test_static_respects_client_when_asked(self) -> None:
        """static with respect_client leaves the client's own value."""
        policy = named("static", Static(num_ctx=8192, keep_alive="30m", respect_client=True))
        outcome = await run_chain([policy], ctx(client_num_ctx=2048), Decision(num_ctx=2048), 1.0)
        assert (outcome.decision.num_ctx, outcome.decision.keep_alive) == (2048, "30m")


class TestErrorBoundary:
    @pytest.mark.parametrize(
        ("behaviour", "error"),
        [
            ("raise", "broken: ZeroDivisionError: division by zero"),
            ("hang", "broken: timed out after 50 ms"),
            ("wrong", "broken: returned dict, not a Decision"),
            ("bad_value", "broken: ValueError: num_ctx must be positive, not -1"),
        ],
    )
    async def test_failing_policy_is_skipped_and_logged(self, behaviour: str, error: str) -> None:
        """A policy that raises, hangs or returns junk is skipped; the others still apply."""

        async def broken(c: Context, d: Decision) -> Any:
            if behaviour == "raise":
                return 1 / 0
            if behaviour == "hang":
                await asyncio.sleep(10)
            if behaviour == "bad_value":
                return d.replace(num_ctx=-1)
            return {"num_ctx": 1}

        chain = [
            named("first", await set_ctx(2048)),
            named("broken", broken),
            named("last", Static(keep_alive="5m")),
        ]
        with capture_logs() as logs:
            outcome = await run_chain(chain, ctx(), Decision(), 0.05)
        assert (outcome.decision.num_ctx, outcome.decision.keep_alive) == (2048, "5m")
        assert outcome.errors == (error,)
        [entry] = [e for e in logs if e["event"] == "policy_error"]
        assert entry["policy"] == "broken" and entry["log_level"] == "error"
        assert entry["model"] == "llama3.1:8b"


class TestBlockingPolicies:
    """A step that holds the loop cannot be bounded after the fact: it is named, not dropped."""

    @pytest.mark.parametrize("past", [False, True])
    async def test_a_step_that_held_the_loop_keeps_its_decision(self, past: bool) -> None:
        """Held under or past the timeout, the decision stands and the hold is logged by name.

        The loop's own pauses (a collection, a descheduled process) land on whichever step runs;
        dropping that step's decision would change num_ctx, and reload the model, at random.
        """

        held_s = 0.08

        def holds(c: Context, d: Decision) -> Decision:
            time.sleep(held_s)
            return d.replace(num_ctx=3072, reason="after holding the loop")

        timeout_s = held_s / 2 if past else held_s * 10
        with capture_logs() as logs:
            outcome = await run_chain([named("holds", holds)], ctx(), Decision(), timeout_s)
        assert (outcome.decision.num_ctx, outcome.errors) == (3072, ())
        [blocked] = [e for e in logs if e["event"] == "policy_blocked_loop"]
        assert (blocked["policy"], blocked["past_timeout"]) == ("holds", past)
        assert blocked["held_ms"] >= held_s * 1000


class TestSuspendingPolicies:
    """Policies that wait (I/O, sleeps) run under the timeout; ones that never wait arm no timer."""

    async def test_policy_that_waits_within_the_timeout(self) -> None:
        """A policy that suspends several times and returns in time is applied."""

        async def slow_but_fine(c: Context, d: Decision) -> Decision:
            for _ in range(3):
                await asyncio.sleep(0.01)
            return d.replace(num_ctx=4096, reason="after waiting")

        outcome = await run_chain([named("slow", slow_but_fine)], ctx(), Decision(), 1.0)
        assert outcome.decision.num_ctx == 4096 and outcome.errors == ()

    async def test_policy_that_fails_after_waiting(self) -> None:
        """An exception raised after a suspension is caught by the same boundary."""

        async def fails_later(c: Context, d: Decision) -> Decision:
            await asyncio.sleep(0)
            raise KeyError("gpu")

        outcome = await run_chain([named("later", fails_later)], ctx(), Decision(), 1.0)
        assert outcome.errors == ("later: KeyError: 'gpu'",)

    async def test_awaitable_object_is_bounded_too(self) -> None:
        """A policy returning a plain awaitable (a future) is held to the timeout as well."""
        never: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        outcome = await run_chain([named("future", lambda c, d: never)], ctx(), Decision(), 0.02)
        assert outcome.errors == ("future: timed out after 20 ms",)

    async def test_cancellation_of_the_request_reaches_the_policy(self) -> None:
        """If the request itself is cancelled while a policy waits, the policy sees it."""
        seen: list[str] = []
        waiting = asyncio.Event()

        async def waits(c: Context, d: Decision) -> Decision:
            waiting.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            return d

        task = asyncio.create_task(run_chain([named("waits", waits)], ctx(), Decision(), 30.0))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["cancelled"]


class TestRuleLookup:
    def test_first_matching_rule_and_its_memo(self) -> None:
        """Rules match in config order; the answer per name is remembered, misses included."""
        from proxy.config import parse_config
        from proxy.govern.rules import Governor

        config = parse_config(
            {
                "rules": [
                    {"models": ["llama3.1:*"], "policies": [{"use": "static", "num_ctx": 1024}]},
                    {"models": ["llama*"], "policies": []},
                ]
            }
        )
        governor = Governor.build(config)
        assert governor.rule_for("llama3.1") is governor.rules[0]
        assert governor.rule_for("llama3.2:1b") is governor.rules[1]
        assert governor.rule_for("gemma3") is None
        assert governor.rule_for("llama3.1") is governor.rules[0]
        assert set(governor._by_model) == {"llama3.1", "llama3.2:1b", "gemma3"}
