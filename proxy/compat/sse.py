"""Server-sent event frames exactly as Ollama's middleware writes them with ``fmt.Sprintf``."""

from __future__ import annotations

from typing import Any

from proxy.compat.gojson import dumps

DONE = b"data: [DONE]\n\n"
"""The last frame of an OpenAI chat or completions stream."""

STREAM_HEADERS: dict[str, str] = {"Content-Type": "text/event-stream"}
"""What ``/v1/chat/completions`` and ``/v1/completions`` streams carry (the middleware sets it)."""

EVENT_STREAM_HEADERS: dict[str, str] = {
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "Content-Type": "text/event-stream",
}
"""What ``/v1/responses`` and ``/v1/messages`` streams carry, in the order Go writes headers."""

JSON_HEADERS: dict[str, str] = {"Content-Type": "application/json"}
"""What a non-streamed reply carries (``json.NewEncoder`` after ``Header().Set``)."""


def data_frame(payload: Any) -> bytes:
    """``data: <json>`` and the blank line, as the OpenAI writers emit each chunk."""
    return b"data: " + dumps(payload) + b"\n\n"


def event_frame(event: str, payload: Any) -> bytes:
    """``event: <name>`` then ``data: <json>``, as the Anthropic and Responses writers emit."""
    return b"event: " + event.encode("utf-8") + b"\ndata: " + dumps(payload) + b"\n\n"
