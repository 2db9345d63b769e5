"""The ``/v1/responses`` event stream, as Ollama's ``ResponsesStreamConverter`` writes it.

``response.created`` and ``response.in_progress`` open it; reasoning, function calls and the
message each become an output item with its added/delta/done events; ``response.completed``
closes it with the whole output and the usage. Ollama builds every payload as a Go map, so
keys are sorted at every level (a ``json_schema`` keeps its own order), each event carries a
``sequence_number``, and ``created_at`` is the time the event is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.compat.gojson import Verbatim, go_map_deep
from proxy.compat.native import Clock, IdSource, NativeRequest, RandomIds, default_clock, now_seconds
from proxy.compat.openai_common import native_message, openai_tool_calls
from proxy.compat.openai_responses import ResponsesReply, response_usage
from proxy.compat.sse import event_frame


class StreamTranslator:
    """Each native ``/api/chat`` line in, the Responses events it causes out, at once."""

    def __init__(
        self,
        request: NativeRequest[ResponsesReply],
        *,
        clock: Clock = default_clock,
        ids: IdSource | None = None,
    ) -> None:
        self._reply = request.reply
        self._model = request.model
        self._clock = clock
        self._ids = ids or RandomIds()
        self._first_write = True
        self._output_index = 0
        self._content_started = False
        self._tool_calls_sent = False
        self._text = ""
        self._sequence = 0
        self._thinking = ""
        self._reasoning_id = ""
        self._reasoning_started = False
        self._completed_items: list[dict[str, Any]] = []
        self.native_error: str | None = None
        """The message of a native error line met mid-stream (Ollama loses it; logs need not)."""

    def feed(self, native: Mapping[str, Any]) -> list[bytes]:
        """The frames Ollama writes for one native NDJSON object (``Process``)."""
        if isinstance(native.get("error"), str):
            self.native_error = native["error"]
        message = native_message(native)
        thinking = message.get("thinking") if isinstance(message.get("thinking"), str) else ""
        content = message.get("content") if isinstance(message.get("content"), str) else ""
        tool_calls = openai_tool_calls(message.get("tool_calls"))
        events: list[tuple[str, dict[str, Any]]] = []
        if self._first_write:
            self._first_write = False
            events.append(
                self._event("response.created", {"response": self._response("in_progress", [], None)})
            )
            events.append(
                self._event("response.in_progress", {"response": self._response("in_progress", [], None)})
            )
        if thinking:
            events.extend(self._thinking_events(str(thinking)))
        if tool_calls:
            events.extend(self._finish_reasoning())
            events.extend(self._function_call_events(tool_calls))
            self._tool_calls_sent = True
        if not tool_calls and not self._tool_calls_sent and content:
            events.extend(self._text_events(str(content)))
        if native.get("done") is True:
            events.extend(self._completion_events(native))
        return [event_frame(name, payload) for name, payload in events]

    def close(self) -> list[bytes]:
        """Frames owed when the native stream ends: none; Ollama writes nothing more."""
        return []

    def _event(self, name: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        payload = go_map_deep({**data, "type": name, "sequence_number": self._sequence})
        self._sequence += 1
        return name, payload

    def _response(self, status: str, output: list[Any], usage: dict[str, Any] | None) -> dict[str, Any]:
        reply = self._reply
        tools = [
            {
                "type": tool.get("type", ""),
                "name": tool.get("name", ""),
                "description": tool.get("description"),
                "strict": tool.get("strict"),
                "parameters": tool.get("parameters"),
            }
            for tool in reply.tools
        ]
        text_format: dict[str, Any] = {"type": "text"}
        if reply.text_format is not None:
            text_format = {"type": reply.text_format.get("type", "")}
            if reply.text_format.get("name"):
                text_format["name"] = reply.text_format["name"]
            if "schema" in reply.text_format:
                text_format["schema"] = Verbatim(reply.text_format["schema"])
            if "strict" in reply.text_format:
                text_format["strict"] = reply.text_format["strict"]
        reasoning = None
        if reply.reasoning_effort or reply.reasoning_summary:
            reasoning = {"effort": reply.reasoning_effort or None, "summary": reply.reasoning_summary or None}
        return {
            "id": reply.response_id,
            "object": "response",
            "created_at": now_seconds(self._clock),
            "completed_at": None,
            "status": status,
            "incomplete_details": None,
            "model": self._model,
            "previous_response_id": None,
            "instructions": reply.instructions or None,
            "output": output,
            "error": None,
            "tools": tools,
            "tool_choice": "auto",
            "truncation": reply.truncation if reply.truncation is not None else "disabled",
            "parallel_tool_calls": True,
            "text": {"format": text_format},
            "top_p": reply.top_p if reply.top_p is not None else 1.0,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": reply.temperature if reply.temperature is not None else 1.0,
            "reasoning": reasoning,
            "usage": usage,
            "max_output_tokens": reply.max_output_tokens,
            "max_tool_calls": None,
            "store": False,
            "background": reply.background,
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def _thinking_events(self, thinking: str) -> list[tuple[str, dict[str, Any]]]:
        events = []
        if not self._reasoning_started:
            self._reasoning_started = True
            self._reasoning_id = f"rs_{self._ids.intn(999999)}"
            item = {"id": self._reasoning_id, "type": "reasoning", "summary": []}
            events.append(
                self._event("response.output_item.added", {"output_index": self._output_index, "item": item})
            )
        self._thinking += thinking
        delta = {
            "item_id": self._reasoning_id,
            "output_index": self._output_index,
            "summary_index": 0,
            "delta": thinking,
        }
        events.append(self._event("response.reasoning_summary_text.delta", delta))
        return events

    def _finish_reasoning(self) -> list[tuple[str, dict[str, Any]]]:
        if not self._reasoning_started:
            return []
        item_id, thinking, output_index = self._reasoning_id, self._thinking, self._output_index
        item = {
            "id": item_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": thinking}],
            "encrypted_content": thinking,
        }
        self._completed_items.append(item)
        self._thinking, self._reasoning_id, self._reasoning_started = "", "", False
        self._output_index += 1
        done = {"item_id": item_id, "output_index": output_index, "summary_index": 0, "text": thinking}
        return [
            self._event("response.reasoning_summary_text.done", done),
            self._event("response.output_item.done", {"output_index": output_index, "item": item}),
        ]

    def _function_call_events(self, tool_calls: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        events = []
        for index, call in enumerate(tool_calls):
            output_index = self._output_index + index
            item_id = f"fc_{self._ids.intn(999999)}_{index}"
            arguments = call["function"]["arguments"]
            fields = {
                "id": item_id,
                "type": "function_call",
                "call_id": call["id"],
                "name": call["function"]["name"],
            }
            done_item = {**fields, "status": "completed", "arguments": arguments}
            self._completed_items.append(done_item)
            added = {
                "output_index": output_index,
                "item": {**fields, "status": "in_progress", "arguments": ""},
            }
            events.append(self._event("response.output_item.added", added))
            delta = {"item_id": item_id, "output_index": output_index, "delta": arguments}
            events.append(self._event("response.function_call_arguments.delta", delta))
            done = {"item_id": item_id, "output_index": output_index, "arguments": arguments}
            events.append(self._event("response.function_call_arguments.done", done))
            events.append(
                self._event("response.output_item.done", {"output_index": output_index, "item": done_item})
            )
        self._output_index += len(tool_calls)
        return events

    def _text_part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _text_events(self, content: str) -> list[tuple[str, dict[str, Any]]]:
        events = self._finish_reasoning()
        item_id = self._reply.item_id
        if not self._content_started:
            self._content_started = True
            item = {
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            events.append(
                self._event("response.output_item.added", {"output_index": self._output_index, "item": item})
            )
            part = {
                "item_id": item_id,
                "output_index": self._output_index,
                "content_index": 0,
                "part": self._text_part(""),
            }
            events.append(self._event("response.content_part.added", part))
        self._text += content
        delta = {
            "item_id": item_id,
            "output_index": self._output_index,
            "content_index": 0,
            "delta": content,
            "logprobs": [],
        }
        events.append(self._event("response.output_text.delta", delta))
        return events

    def _message_item(self) -> dict[str, Any]:
        return {
            "id": self._reply.item_id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [self._text_part(self._text)],
        }

    def _completion_events(self, native: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = self._finish_reasoning()
        item_id, output_index = self._reply.item_id, self._output_index
        if not self._tool_calls_sent and self._content_started:
            text_done = {
                "item_id": item_id,
                "output_index": output_index,
                "content_index": 0,
                "text": self._text,
                "logprobs": [],
            }
            events.append(self._event("response.output_text.done", text_done))
            part_done = {
                "item_id": item_id,
                "output_index": output_index,
                "content_index": 0,
                "part": self._text_part(self._text),
            }
            events.append(self._event("response.content_part.done", part_done))
            events.append(
                self._event(
                    "response.output_item.done", {"output_index": output_index, "item": self._message_item()}
                )
            )
        prompt, completion, cached = response_usage(native)
        usage = {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        output: list[Any] = [*self._completed_items]
        if self._content_started:
            output.append(self._message_item())
        response = self._response("completed", output, usage)
        response["completed_at"] = now_seconds(self._clock)
        events.append(self._event("response.completed", {"response": response}))
        return events
