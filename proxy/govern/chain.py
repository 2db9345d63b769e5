"""Run a rule's policies in order, folding the decision, each behind the one error boundary.

Like structlog's processor loop, each policy receives the decision so far and returns the next.
A policy that raises (anything, ``SystemExit`` included), exceeds the timeout, or returns
something other than a ``Decision`` is logged with its name and skipped: a broken policy
degrades one decision, never a request. One that holds the event loop is named in the log.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from policies.context import Context
from policies.decision import Decision
from policies.records import cheap_init
from proxy.govern.boundary import being_cancelled, describe, trimmed_traceback
from proxy.govern.loader import LoadedPolicy
from proxy.govern.record import PolicyChange
from proxy.govern.stall import StepLog

log = structlog.get_logger("ollama_governor.chain")

BLOCKING_LOG_S = 0.05
"""A policy step that holds the event loop longer than this is named in the log: every other
request waited for it."""


@cheap_init
@dataclass(frozen=True, slots=True)
class ChainOutcome:
    """The final decision, who changed what, and which policies failed."""

    decision: Decision
    changes: tuple[PolicyChange, ...] = ()
    errors: tuple[str, ...] = ()
    rejected_by: str | None = None


class _Failed(Exception):
    """A policy's failure, already described for the log and the result."""


async def run_chain(
    policies: Sequence[LoadedPolicy],
    ctx: Context,
    decision: Decision,
    timeout_s: float,
    steps: StepLog | None = None,
) -> ChainOutcome:
    """Fold ``decision`` through ``policies``; stop early when one rejects the request.

    A policy step that holds the event loop is noted in ``steps``, where the stall monitor
    (``proxy.govern.stall``) finds the name of what held it.
    """
    changes: list[PolicyChange] = []
    errors: list[str] = []
    for policy in policies:
        try:
            result = await _run(policy, ctx, decision, timeout_s, steps)
        except _Failed as failed:
            errors.append(f"{policy.name}: {failed}")
            continue
        change = _change(policy.name, decision, result)
        if change is not None:
            changes.append(change)
        decision = result
        if decision.rejected:
            return ChainOutcome(decision, tuple(changes), tuple(errors), policy.name)
    return ChainOutcome(decision, tuple(changes), tuple(errors))


async def _run(
    policy: LoadedPolicy, ctx: Context, decision: Decision, timeout_s: float, steps: StepLog | None
) -> Decision:
    """One policy behind the boundary; raises ``_Failed`` (already logged) when it fails."""
    try:
        result = await _call(policy, ctx, decision, timeout_s, steps)
    except _Failed as failed:
        _log_failure(policy.name, ctx, str(failed), None)
        raise
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and being_cancelled():
            raise  # the request itself is being cancelled: not the policy's doing
        why = describe(exc)
        _log_failure(policy.name, ctx, why, exc)
        raise _Failed(why) from None
    if not isinstance(result, Decision):
        why = f"returned {type(result).__name__}, not a Decision"
        _log_failure(policy.name, ctx, why, None)
        raise _Failed(why)
    return result


async def _call(
    policy: LoadedPolicy, ctx: Context, decision: Decision, timeout_s: float, steps: StepLog | None
) -> object:
    """Call the policy, bounding by ``timeout_s`` whatever can still be bounded.

    Most policies never suspend, so their first step runs directly, without a timer or a task
    (a timer per policy per request was a third of the chain's cost). A policy that suspends
    finishes in a task that is abandoned at the deadline, so a policy that swallows the
    cancellation cannot hold the request. A ``threaded`` policy runs in a worker thread.

    A step that holds the loop is named, never dropped: the time is spent by then, and the
    loop's own pauses (a garbage collection, a host that descheduled the process) land on
    whichever step runs, so dropping its decision would change ``num_ctx``, and reload the
    model, at random under load.
    """
    if policy.threaded:
        thread = asyncio.ensure_future(asyncio.to_thread(policy.call, ctx, decision))
        return await _bounded(thread, timeout_s, policy.name)
    started = time.perf_counter()
    try:
        result: object = policy.call(ctx, decision)
        pending: Any = None
        if inspect.iscoroutine(result):
            coro = result
            try:
                pending = coro.send(None)
            except StopIteration as done:
                result = done.value
            else:
                result = _Resumed(coro, pending)
    finally:
        _note_hold(policy, ctx, time.perf_counter() - started, timeout_s, steps)
    if isinstance(result, _Resumed) or inspect.isawaitable(result):
        return await _bounded(asyncio.ensure_future(result), timeout_s, policy.name)
    return result


def _note_hold(
    policy: LoadedPolicy, ctx: Context, held_s: float, timeout_s: float, steps: StepLog | None
) -> None:
    """Name a step that held the loop, for the log and for the stall monitor."""
    if held_s < BLOCKING_LOG_S:
        return
    if steps is not None:
        steps.note(f"policy {policy.name}", held_s)
    log.warning(
        "policy_blocked_loop",
        policy=policy.name,
        model=ctx.model_name,
        held_ms=round(held_s * 1000, 1),
        past_timeout=bool(timeout_s) and held_s > timeout_s,
        action="every other request waited; make it async, or set threaded = true for it",
    )


async def _bounded(task: asyncio.Future[Any], timeout_s: float, name: str) -> object:
    """The task's result within ``timeout_s``; past it the task is cancelled and left behind,
    named for its policy (the shutdown names what refuses to stop)."""
    if isinstance(task, asyncio.Task):
        task.set_name(f"policy {name}")
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s or None)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_forget)
        raise _Failed(f"timed out after {timeout_s * 1000:.0f} ms")
    return task.result()


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned policy's outcome so asyncio does not warn about it."""
    if not task.cancelled():
        task.exception()


class _Resumed:
    """Awaits the rest of a coroutine that already ran its first step and yielded ``pending``.

    It passes what the coroutine yields to the task and what the task sends or throws (a
    cancellation included) back into it, exactly as ``await`` would have.
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
            except BaseException as exc:  # thrown in by the task, e.g. a cancellation
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                pending = coro.send(value)
            except StopIteration as done:
                return done.value


def _log_failure(name: str, ctx: Context, why: str, exc: BaseException | None) -> None:
    log.error(
        "policy_error",
        policy=name,
        model=ctx.model_name,
        endpoint=ctx.endpoint,
        error=why,
        traceback=trimmed_traceback(exc) if exc is not None else None,
        action="skipped; the request goes on with the decision so far",
    )


def _change(name: str, before: Decision, after: Decision) -> PolicyChange | None:
    fields: tuple[str, ...] = ()
    if before.num_ctx != after.num_ctx:
        fields += ("num_ctx",)
    if before.keep_alive != after.keep_alive:
        fields += ("keep_alive",)
    if before.rejection != after.rejection:
        fields += ("rejection",)
    new_reasons = after.reasons[len(before.reasons) :]
    if not fields and not new_reasons:
        return None
    new_outcomes = after.outcomes[len(before.outcomes) :]
    reason = "; ".join(new_reasons) or after.rejection or ""
    return PolicyChange(
        policy=name, fields=fields, reason=reason, outcome=new_outcomes[-1] if new_outcomes else None
    )
