"""The one error boundary around every plugin-facing or optional step.

Like mitmproxy's ``safecall``: a step that fails (a policy, a results sink, a facts hook) is
logged with its name and the last frames of its traceback, and the request goes on. Nothing a
plugin raises, ``SystemExit`` and a stray ``CancelledError`` included, may end a request or the
service; only a real cancellation of the running task (shutdown, a client that went away) passes.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("ollama_governor.boundary")

T = TypeVar("T")

TRACEBACK_FRAMES = 4
"""The last frames are the step's own: enough to find the bug, short enough for one log line."""


def describe(exc: BaseException) -> str:
    """``TypeName: message`` for logs and results (the message alone can be empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def trimmed_traceback(exc: BaseException) -> str:
    """The last frames of ``exc``'s traceback as text."""
    return "".join(traceback.format_exception(exc, limit=-TRACEBACK_FRAMES)).rstrip()


def being_cancelled() -> bool:
    """Whether the running task has a cancellation pending (shutdown, the client went away).

    A ``CancelledError`` raised while this is False did not come from asyncio: it is a plugin's
    own exception and is treated like any other failure.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def report(step: str, exc: BaseException, event: str = "step_error", **fields: Any) -> str:
    """Log a failed step once, with its name and trimmed traceback; return ``describe(exc)``."""
    why = describe(exc)
    log.error(event, step=step, error=why, traceback=trimmed_traceback(exc), **fields)
    return why


def safecall(step: str, fn: Callable[..., T], *args: Any, **fields: Any) -> T | None:
    """``fn(*args)``, or None when it raised (logged as ``step``'s failure)."""
    try:
        return fn(*args)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and being_cancelled():
            raise
        report(step, exc, **fields)
        return None


async def safe_await(step: str, awaitable: Awaitable[T], **fields: Any) -> T | None:
    """The awaitable's result, or None when it raised (logged as ``step``'s failure)."""
    try:
        return await awaitable
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and being_cancelled():
            raise
        report(step, exc, **fields)
        return None
