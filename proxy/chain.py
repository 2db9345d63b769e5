"""Run a rule's policies in order, folding the decision; the one error boundary around plugins.

Like structlog's processor loop, each policy receives the decision so far and returns the next.
Unlike it, a policy that raises, hangs past the timeout or returns something else is logged with
its name and skipped: a broken policy degrades one decision, never a request (mitmproxy's
``safecall``).
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from policies.context import Context
from policies.decision import Decision
from proxy.loader import LoadedPolicy

log = structlog.get_logger("ollama_governor.chain")


@dataclass(frozen=True, slots=True)
class PolicyEffect:
    """What one policy changed, for the results log: its name, the fields, and why."""

    policy: str
    fields: tuple[str, ...]
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"policy": self.policy, "fields": list(self.fields), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ChainOutcome:
    """The final decision, who changed what, and which policies failed."""

    decision: Decision
    effects: tuple[PolicyEffect, ...] = ()
    errors: tuple[str, ...] = ()
    rejected_by: str | None = None


async def run_chain(
    policies: Sequence[LoadedPolicy], ctx: Context, decision: Decision, timeout_s: float
) -> ChainOutcome:
    """Fold ``decision`` through ``policies``; stop early when one rejects the request."""
    effects: list[PolicyEffect] = []
    errors: list[str] = []
    for policy in policies:
        result = await _call_safely(policy, ctx, decision, timeout_s, errors)
        if result is None:
            continue
        effect = _effect(policy.name, decision, result)
        if effect is not None:
            effects.append(effect)
        decision = result
        if decision.rejected:
            return ChainOutcome(decision, tuple(effects), tuple(errors), policy.name)
    return ChainOutcome(decision, tuple(effects), tuple(errors))


async def _call_safely(
    policy: LoadedPolicy,
    ctx: Context,
    decision: Decision,
    timeout_s: float,
    errors: list[str],
) -> Decision | None:
    try:
        result: object = policy.call(ctx, decision)
        if inspect.iscoroutine(result):
            result = await _bounded(result, timeout_s)
        elif inspect.isawaitable(result):
            async with asyncio.timeout(timeout_s or None):
                result = await result
    except TimeoutError:
        _failed(policy.name, ctx, errors, f"timed out after {timeout_s * 1000:.0f} ms")
        return None
    except Exception as exc:
        _failed(policy.name, ctx, errors, f"{type(exc).__name__}: {exc}", exc)
        return None
    if not isinstance(result, Decision):
        _failed(policy.name, ctx, errors, f"returned {type(result).__name__}, not a Decision")
        return None
    return result


async def _bounded(coro: Coroutine[Any, Any, object], timeout_s: float) -> object:
    """Run a policy coroutine, arming the timeout only if it actually waits.

    Most policies never suspend; a timer per policy per request was a third of the chain's cost.
    The first step runs directly; a policy that yields is resumed under ``asyncio.timeout``.
    """
    try:
        pending = coro.send(None)
    except StopIteration as done:
        return done.value
    async with asyncio.timeout(timeout_s or None):
        return await _Resumed(coro, pending)


class _Resumed:
    """Awaits the rest of a coroutine that already ran its first step and yielded ``pending``.

    It passes what the coroutine yields to the task and what the task sends or throws (a
    timeout's cancellation included) back into it, exactly as ``await`` would have.
    """

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, object], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, object]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                value = yield pending
            except BaseException as exc:  # thrown in by the task, e.g. the timeout's cancel
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                pending = coro.send(value)
            except StopIteration as done:
                return done.value


def _failed(
    name: str, ctx: Context, errors: list[str], why: str, exc: BaseException | None = None
) -> None:
    errors.append(f"{name}: {why}")
    trace = None
    if exc is not None:
        # The last frames are the policy's own; enough to find the bug, short enough for a log.
        trace = "".join(traceback.format_exception(exc, limit=-4)).rstrip()
    log.error(
        "policy_error",
        policy=name,
        model=ctx.model_name,
        endpoint=ctx.endpoint,
        error=why,
        traceback=trace,
        action="skipped; the request goes on with the decision so far",
    )


def _effect(name: str, before: Decision, after: Decision) -> PolicyEffect | None:
    fields = tuple(
        f
        for f, changed in (
            ("num_ctx", before.num_ctx != after.num_ctx),
            ("keep_alive", before.keep_alive != after.keep_alive),
            ("rejection", before.rejection != after.rejection),
        )
        if changed
    )
    new_reasons = after.reasons[len(before.reasons) :]
    if not fields and not new_reasons:
        return None
    reason = "; ".join(new_reasons) or after.rejection or ""
    return PolicyEffect(policy=name, fields=fields, reason=reason)
