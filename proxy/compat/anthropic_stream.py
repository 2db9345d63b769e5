"""The ``/v1/messages`` event stream, as Ollama's ``anthropic.StreamConverter`` writes it.

``message_start`` (with an estimated ``input_tokens`` until real counts exist), then per block
``content_block_start``, deltas and ``content_block_stop`` (thinking, then text, then each tool
call whole), then ``message_delta`` with the stop reason and usage, and ``message_stop``.
Ollama sends no ``ping``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.compat.anthropic_messages import MessagesReply, stop_reason
from proxy.compat.gojson import dumps
from proxy.compat.native import NativeRequest
from proxy.compat.openai_common import native_message
from proxy.compat.sse import event_frame


class StreamTranslator:
    """Each native ``/api/chat`` line in, the Anthropic events it causes out, at once."""

    def __init__(self, request: NativeRequest[MessagesReply]) -> None:
        self._reply = request.reply
        self._model = request.model
        self._first_write = True
        self._index = 0
        self._thinking_started = False
        self._thinking_done = False
        self._text_started = False
        self._sent_tool_ids: set[str] = set()
        self.native_error: str | None = None
        """The message of a native error line met mid-stream (Ollama loses it; logs need not)."""

    def feed(self, native: Mapping[str, Any]) -> list[bytes]:
        """The frames Ollama writes for one native NDJSON object (``Process``)."""
        if isinstance(native.get("error"), str):
            self.native_error = native["error"]
        message = native_message(native)
        events: list[tuple[str, dict[str, Any]]] = []
        if self._first_write:
            self._first_write = False
            input_tokens = _int(native.get("prompt_eval_count")) or self._reply.estimated_input_tokens
            start = {
                "id": self._reply.message_id,
                "type": "message",
                "role": "assistant",
                "model": self._model,
                "content": [],
                "usage": {"input_tokens": input_tokens, "output_tokens": 0},
            }
            events.append(("message_start", {"type": "message_start", "message": start}))
        thinking = message.get("thinking")
        if isinstance(thinking, str) and thinking and not self._thinking_done:
            if not self._thinking_started:
                self._thinking_started = True
                events.append(self._block_start({"type": "thinking", "thinking": ""}))
            events.append(self._block_delta({"type": "thinking_delta", "thinking": thinking}))
        content = message.get("content")
        if isinstance(content, str) and content:
            if self._thinking_started and not self._thinking_done:
                self._thinking_done = True
                events.append(self._block_stop())
                self._index += 1
            if not self._text_started:
                self._text_started = True
                events.append(self._block_start({"type": "text", "text": ""}))
            events.append(self._block_delta({"type": "text_delta", "text": content}))
        events.extend(self._tool_call_events(message.get("tool_calls")))
        if native.get("done") is True:
            if self._text_started or (self._thinking_started and not self._thinking_done):
                events.append(self._block_stop())
            reason = stop_reason(_string(native.get("done_reason")), bool(self._sent_tool_ids))
            delta = {"stop_reason": reason} if reason else {}
            usage = {
                "input_tokens": _int(native.get("prompt_eval_count")),
                "output_tokens": _int(native.get("eval_count")),
            }
            events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
            events.append(("message_stop", {"type": "message_stop"}))
        return [event_frame(name, payload) for name, payload in events]

    def close(self) -> list[bytes]:
        """Frames owed when the native stream ends: none; Ollama writes nothing more."""
        return []

    def _block_start(self, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_start", {
            "type": "content_block_start",
            "index": self._index,
            "content_block": block,
        }

    def _block_delta(self, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}

    def _block_stop(self) -> tuple[str, dict[str, Any]]:
        return "content_block_stop", {"type": "content_block_stop", "index": self._index}

    def _tool_call_events(self, tool_calls: Any) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        for call in tool_calls if isinstance(tool_calls, list) else []:
            call = call if isinstance(call, dict) else {}
            call_id = _string(call.get("id"))
            if call_id in self._sent_tool_ids:
                continue
            if self._text_started:
                events.append(self._block_stop())
                self._index += 1
                self._text_started = False
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            assert isinstance(function, dict)
            arguments = function.get("arguments")
            block: dict[str, Any] = {"type": "tool_use"}
            if call_id:
                block["id"] = call_id
            if _string(function.get("name")):
                block["name"] = function["name"]
            block["input"] = {}
            events.append(self._block_start(block))
            partial = dumps(arguments if arguments is not None else {}).decode("utf-8")
            events.append(self._block_delta({"type": "input_json_delta", "partial_json": partial}))
            events.append(self._block_stop())
            self._sent_tool_ids.add(call_id)
            self._index += 1
        return events


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
