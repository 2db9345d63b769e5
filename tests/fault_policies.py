"""Misbehaving policies for the fault suite, loaded by name (``tests.fault_policies:...``).

Each one breaks a rule a policy must keep; the governor must degrade that one decision and
answer the request anyway.
"""

from __future__ import annotations

import asyncio
import time

from policies.context import Context
from policies.decision import Decision

BLOCK_S = 0.4
"""How long the blocking policies hold their thread: longer than the stall threshold."""


def exits(ctx: Context, decision: Decision) -> Decision:
    """Raises SystemExit, as a careless ``sys.exit()`` in a policy would."""
    raise SystemExit(3)


def stray_cancel(ctx: Context, decision: Decision) -> Decision:
    """Raises a CancelledError that no one asked for."""
    raise asyncio.CancelledError


def bad_value(ctx: Context, decision: Decision) -> Decision:
    """Builds a Decision Ollama would refuse (a negative num_ctx)."""
    return Decision(num_ctx=-5)


def not_a_decision(ctx: Context, decision: Decision) -> object:
    """Returns something else entirely."""
    return {"num_ctx": 1}


async def swallows_cancel(ctx: Context, decision: Decision) -> Decision:
    """Swallows the timeout's cancellation and goes on waiting (until cancelled once more)."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(3600)
    return decision


async def never_stops(ctx: Context, decision: Decision) -> Decision:
    """Swallows every cancellation: only the end of the process ends it."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue


def blocks_loop(ctx: Context, decision: Decision) -> Decision:
    """Sleeps on the event loop: every other request waits."""
    time.sleep(BLOCK_S)
    return decision.replace(num_ctx=3072, reason="after blocking")


class BlockingButThreaded:
    """Blocks like ``blocks_loop`` but is configured with ``threaded = true``."""

    def __init__(self, num_ctx: int = 3072) -> None:
        self.num_ctx = num_ctx

    def __call__(self, ctx: Context, decision: Decision) -> Decision:
        time.sleep(BLOCK_S)
        return decision.replace(num_ctx=self.num_ctx, reason="from a worker thread")


def keeps(ctx: Context, decision: Decision) -> Decision:
    """Governs without changing anything: the client's bytes go upstream, a result is recorded."""
    return decision
