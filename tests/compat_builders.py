"""Plain-data builders for the compat translator tests: native lines, fixed ids, a scripted clock.

Native lines follow the recorded ``/api/chat`` and ``/api/generate`` answers field for field
(``test_compat_routes`` checks that against the recordings).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


class FixedIds:
    """An id source that hands out the given numbers and hex strings in order."""

    def __init__(self, *ints: int, hexes: tuple[str, ...] = ()) -> None:
        self._ints = list(ints)
        self._hexes = list(hexes)

    def intn(self, n: int) -> int:
        """The next scripted number (which must be below ``n``)."""
        value = self._ints.pop(0)
        assert 0 <= value < n
        return value

    def hex_bytes(self, n: int) -> str:
        """The next scripted hex string (which must encode ``n`` bytes)."""
        value = self._hexes.pop(0)
        assert len(value) == 2 * n
        return value


class ScriptedClock:
    """A clock reading the given times in turn, then staying at the last one."""

    def __init__(self, *times: float) -> None:
        self._times = list(times)
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self._times.pop(0) if len(self._times) > 1 else self._times[0]


def iso(seconds: int, nanos: int = 123456789) -> str:
    """A native ``created_at`` for a unix time, with Go's nanosecond fraction."""
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def chat_line(
    content: str = "",
    *,
    created: int = 1_796_158_439,
    model: str = "gemma3-270m",
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
    done: bool = False,
    done_reason: str = "stop",
    prompt_eval_count: int = 15,
    eval_count: int = 8,
) -> dict[str, Any]:
    """One native ``/api/chat`` line; the final one (``done``) carries reason and metrics."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    line: dict[str, Any] = {"model": model, "created_at": iso(created), "message": message, "done": done}
    if done:
        line.update(_metrics(done_reason, prompt_eval_count, eval_count))
    return line


def generate_line(
    response: str = "",
    *,
    created: int = 1_796_158_474,
    model: str = "gemma3-270m",
    done: bool = False,
    done_reason: str = "stop",
    prompt_eval_count: int = 15,
    eval_count: int = 8,
) -> dict[str, Any]:
    """One native ``/api/generate`` line; the final one carries context and metrics."""
    line: dict[str, Any] = {"model": model, "created_at": iso(created), "response": response, "done": done}
    if done:
        metrics = _metrics(done_reason, prompt_eval_count, eval_count)
        line["done_reason"] = metrics.pop("done_reason")
        line["context"] = [105, 2364, 107]
        line.update(metrics)
    return line


def _metrics(done_reason: str, prompt_eval_count: int, eval_count: int) -> dict[str, Any]:
    return {
        "done_reason": done_reason,
        "total_duration": 418064115,
        "load_duration": 863900,
        "prompt_eval_count": prompt_eval_count,
        "prompt_eval_duration": 69725000,
        "eval_count": eval_count,
        "eval_duration": 343863000,
    }


def tool_call(
    name: str, arguments: dict[str, Any], *, call_id: str = "call_abc123", index: int = 0
) -> dict[str, Any]:
    """A native tool call as ``/api/chat`` returns it."""
    return {"id": call_id, "function": {"index": index, "name": name, "arguments": arguments}}
