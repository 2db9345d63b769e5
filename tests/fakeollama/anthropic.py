"""Ollama's Anthropic compatibility: /v1/messages (anthropic/anthropic.go, middleware/anthropic.go).

Wire format as recorded (tests/data/ollama-0.33/v1_messages_*.txt): no ``anthropic-version``
or ``x-api-key`` needed, ``max_tokens`` required, errors ``{"type":"error","error":{...},
"request_id":"req_..."}``, and the stream message_start, content_block_start/delta/stop,
message_delta, message_stop with ``event:`` lines and keep-alive headers.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tests.fakeollama.engine import IMAGE_TOKENS, Gen, tokens_of
from tests.fakeollama.host import Host
from tests.fakeollama.native import fake_tool_calls
from tests.fakeollama.openai import SSE_KEEPALIVE_HEADERS
from tests.fakeollama.options import content_text
from tests.fakeollama.wire import PLAIN_JSON_CT, ApiError, dumps, go_type_name, hex_id, json_response

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """anthropic.EstimateInputTokens: (system + roles + contents + tools) characters / 4, at least 1."""
    total = len(content_text(body.get("system"))) if body.get("system") is not None else 0
    messages = body.get("messages") or []
    for msg in messages:
        if isinstance(msg, dict):
            total += len(str(msg.get("role", ""))) + len(content_text(msg.get("content")))
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            total += len(str(tool.get("name", ""))) + len(str(tool.get("description", "")))
            total += len(dumps(tool.get("input_schema"))) if tool.get("input_schema") is not None else 0
    tokens = total // 4
    return 1 if tokens == 0 and (messages or body.get("system") is not None) else tokens


class MessagesRenderer:
    """/v1/messages: a message object, or its SSE event sequence."""

    stream_headers = SSE_KEEPALIVE_HEADERS

    def __init__(self, message_id: str, estimated_input: int) -> None:
        self.message_id, self.estimated_input = message_id, estimated_input

    def _stop_reason(self, g: Gen) -> str:
        return "tool_use" if g.tool_calls else _STOP_REASONS.get(g.done_reason, "stop_sequence")

    @staticmethod
    def _event(event: str, data: dict[str, Any]) -> bytes:
        return f"event: {event}\ndata: {dumps(data)}\n\n".encode()

    def _start(self, g: Gen) -> list[bytes]:
        if g.state.get("started"):
            return []
        g.state["started"] = True
        return [
            self._event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": self.message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": g.req_model,
                        "content": [],
                        "usage": {"input_tokens": self.estimated_input, "output_tokens": 0},
                    },
                },
            )
        ]

    def chunk(self, g: Gen, i: int) -> list[bytes]:
        out = self._start(g)
        if i >= len(g.pieces):
            return out
        if not g.state.get("text"):
            g.state["text"] = True
            out.append(
                self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
        out.append(
            self._event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": g.pieces[i]},
                },
            )
        )
        return out

    def tail(self, g: Gen) -> list[bytes]:
        out = self._start(g)
        index = 0
        if g.state.get("text"):
            out.append(self._event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            index = 1
        for call in g.tool_calls:
            out += [
                self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": call["id"],
                            "name": call["name"],
                            "input": {},
                        },
                    },
                ),
                self._event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": dumps(call["arguments"])},
                    },
                ),
                self._event("content_block_stop", {"type": "content_block_stop", "index": index}),
            ]
            index += 1
        return [
            *out,
            self._event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._stop_reason(g)},
                    "usage": {"input_tokens": g.prompt_tokens, "output_tokens": g.n_tokens},
                },
            ),
            self._event("message_stop", {"type": "message_stop"}),
        ]

    def body(self, g: Gen) -> web.StreamResponse:
        content: list[dict[str, Any]] = [{"type": "text", "text": g.text}] if g.text else []
        content += [
            {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["arguments"]}
            for c in g.tool_calls
        ]
        return json_response(
            {
                "id": self.message_id,
                "type": "message",
                "role": "assistant",
                "model": g.req_model,
                "content": content or None,
                "stop_reason": self._stop_reason(g),
                "usage": {"input_tokens": g.prompt_tokens, "output_tokens": g.n_tokens},
            },
            content_type=PLAIN_JSON_CT,
            newline=True,
        )


def message_parts(body: dict[str, Any], *, vision: bool) -> list[tuple[str, int]]:
    """anthropic.FromMessagesRequest: a system prompt, then text, image and tool blocks."""
    parts: list[tuple[str, int]] = []
    if body.get("system") is not None and content_text(body.get("system")):
        parts.append(("system", tokens_of(content_text(body["system"]))))
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            raise ApiError(400, "invalid content block format", from_writer=False)
        role, content = str(msg.get("role", "user")).lower(), msg.get("content")
        if isinstance(content, str):
            parts.append((role, tokens_of(content)))
        elif isinstance(content, list):
            images = sum(1 for b in content if isinstance(b, dict) and b.get("type") == "image")
            results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
            parts.append((role, tokens_of(content_text(content)) + (IMAGE_TOKENS * images if vision else 0)))
            parts += [
                (
                    "tool",
                    tokens_of(
                        content_text(b.get("content"))
                        if isinstance(b.get("content"), list)
                        else str(b.get("content", ""))
                    ),
                )
                for b in results
            ]
        else:
            raise ApiError(400, f"invalid message content type: {go_type_name(content)}", from_writer=False)
    return parts


class AnthropicRoutes(Host):
    """The /v1/messages handler; what it calls of the other mixins is in host.py."""

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic_ns()
        body = await self._compat_body(request)
        if not body.get("model"):
            raise ApiError(400, "model is required", from_writer=False)
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
            raise ApiError(400, "max_tokens is required and must be positive", from_writer=False)
        if not body.get("messages"):
            raise ApiError(400, "messages is required", from_writer=False)
        req_model, model = self._compat_model(body)
        parts = message_parts(body, vision="vision" in model.capabilities)
        tools = body.get("tools")
        if tools and "tools" not in model.capabilities:
            raise ApiError(400, f"registry.ollama.ai/library/{model.full_name} does not support tools")
        tool_calls = fake_tool_calls(tools, parts[-1][0] if parts else "user")
        stops = body.get("stop_sequences")
        renderer = MessagesRenderer(hex_id("msg"), estimate_input_tokens(body))
        g = self._new_gen(
            "messages",
            renderer,
            request.path,
            req_model,
            self._runner_request(model, {}, None),
            parts,
            max_tokens,
            body.get("stream") is True,
            t0,
            stop=[s for s in stops if isinstance(s, str)] if isinstance(stops, list) else [],
            tool_calls=tool_calls,
        )
        if tool_calls:
            g.pieces = []
        return await self._run(request, g)
