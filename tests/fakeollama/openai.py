"""Ollama's OpenAI compatibility: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models, /v1/models/{model} and /v1/responses (openai/openai.go, middleware/openai.go).

Wire format as recorded (tests/data/ollama-0.33/v1_*.txt): ``data: {json}\\n\\n`` chunks and
``data: [DONE]``; /v1/responses with ``event:`` lines and sorted keys; bodies from the response
writer end with a newline and say ``application/json``. These routes take no num_ctx or
keep_alive: they run at the Modelfile's, OLLAMA_CONTEXT_LENGTH's or the default context.
"""

from __future__ import annotations

import base64
import binascii
import random
import struct
import time
from typing import Any

from aiohttp import web

from tests.fakeollama.engine import IMAGE_TOKENS, Gen, tokens_of
from tests.fakeollama.host import Host
from tests.fakeollama.models import FakeModel
from tests.fakeollama.native import EMBEDDINGS_UNSUPPORTED, embedding, fake_tool_calls
from tests.fakeollama.options import content_text
from tests.fakeollama.wire import (
    PLAIN_JSON_CT,
    SSE_ERROR_HEADERS,
    ApiError,
    check_go_fields,
    dumps,
    full_name,
    go_type_name,
    json_response,
)

SSE_HEADERS = {"Content-Type": "text/event-stream"}
SSE_KEEPALIVE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
}
REQUEST_FIELDS: dict[str, tuple[str, dict[str, str]]] = {
    "/v1/chat/completions": (
        "ChatCompletionRequest",
        {
            "model": "string",
            "messages": "[]openai.Message",
            "stream": "bool",
            "max_tokens": "int",
            "seed": "int",
            "temperature": "float64",
            "top_p": "float64",
            "tools": "[]api.Tool",
            "stream_options": "openai.StreamOptions",
        },
    ),
    "/v1/completions": (
        "CompletionRequest",
        {
            "model": "string",
            "prompt": "string",
            "stream": "bool",
            "max_tokens": "int",
            "seed": "int",
            "temperature": "float32",
            "top_p": "float32",
            "suffix": "string",
            "stream_options": "openai.StreamOptions",
        },
    ),
    "/v1/embeddings": ("EmbedRequest", {"model": "string", "dimensions": "int", "encoding_format": "string"}),
    "/v1/responses": (
        "ResponsesRequest",
        {
            "model": "string",
            "stream": "bool",
            "instructions": "string",
            "max_output_tokens": "int",
            "tools": "[]openai.ResponsesTool",
        },
    ),
    "/v1/messages": (
        "MessagesRequest",
        {
            "model": "string",
            "max_tokens": "int",
            "messages": "[]anthropic.MessageParam",
            "stream": "bool",
            "temperature": "float64",
            "top_k": "int",
            "tools": "[]anthropic.Tool",
        },
    ),
}
"""The top-level fields of each route's Go request struct that the fake checks as gin's
``ShouldBindJSON`` does (the first field of the wrong type fails the request)."""
_IMAGE_PREFIXES = ("data:;base64,", *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")))


def sse(obj: Any) -> bytes:
    return f"data: {obj if obj == '[DONE]' else dumps(obj)}\n\n".encode()


def sse_event(event: str, obj: dict[str, Any]) -> bytes:
    """An ``event:``/``data:`` pair; Go marshals these maps with sorted keys."""
    return f"event: {event}\ndata: {dumps(_sorted(obj))}\n\n".encode()


def _sorted(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted(x) for x in obj]
    return obj


def openai_tool_calls(g: Gen) -> list[dict[str, Any]]:
    return [
        {
            "id": c["id"],
            "index": i,
            "type": "function",
            "function": {"name": c["name"], "arguments": dumps(c["arguments"])},
        }
        for i, c in enumerate(g.tool_calls)
    ]


class ChatCompletionRenderer:
    """/v1/chat/completions: chunks with a delta (the role only in the first), usage, [DONE]."""

    stream_headers = SSE_HEADERS

    def __init__(self, modern: bool) -> None:
        self.modern = modern

    def _head(self, g: Gen, obj: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{g.oid}",
            "object": obj,
            "created": g.created,
            "model": g.req_model,
            "system_fingerprint": "fp_ollama",
        }

    def _usage(self, g: Gen) -> dict[str, int]:
        return {
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.n_tokens,
            "total_tokens": g.prompt_tokens + g.n_tokens,
        }

    def _finish(self, g: Gen) -> str:
        return "tool_calls" if g.tool_calls else g.done_reason

    def chunk(self, g: Gen, i: int) -> list[bytes]:
        if i >= len(g.pieces):
            return []
        text = g.pieces[i]
        delta = {"role": "assistant", "content": text} if i == 0 else {"content": text}
        return [
            sse(
                {
                    **self._head(g, "chat.completion.chunk"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
            )
        ]

    def tail(self, g: Gen) -> list[bytes]:
        out: list[bytes] = []
        if g.tool_calls:
            delta = {"role": "assistant", "content": "", "tool_calls": openai_tool_calls(g)}
            out.append(
                sse(
                    {
                        **self._head(g, "chat.completion.chunk"),
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }
                )
            )
        out.append(
            sse(
                {
                    **self._head(g, "chat.completion.chunk"),
                    "choices": [{"index": 0, "delta": {}, "finish_reason": self._finish(g)}],
                }
            )
        )
        if g.include_usage:
            out.append(
                sse({**self._head(g, "chat.completion.chunk"), "choices": [], "usage": self._usage(g)})
            )
        return [*out, sse("[DONE]")]

    def body(self, g: Gen) -> web.StreamResponse:
        message: dict[str, Any] = {"role": "assistant", "content": g.text}
        if g.tool_calls:
            message["tool_calls"] = openai_tool_calls(g)
        return json_response(
            {
                **self._head(g, "chat.completion"),
                "choices": [{"index": 0, "message": message, "finish_reason": self._finish(g)}],
                "usage": self._usage(g),
            },
            content_type=PLAIN_JSON_CT,
            newline=self.modern,
        )


class CompletionRenderer:
    """/v1/completions: text chunks, a final empty one with finish_reason, usage, [DONE]."""

    stream_headers = SSE_HEADERS

    def __init__(self, modern: bool) -> None:
        self.modern = modern

    def _chunk(self, g: Gen, text: str, finish: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": f"cmpl-{g.oid}",
            "object": "text_completion",
            "created": g.created,
            "choices": [{"text": text, "index": 0, "finish_reason": finish}],
            "model": g.req_model,
            "system_fingerprint": "fp_ollama",
        }
        if g.include_usage and self.modern:
            out["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return out

    def _usage(self, g: Gen) -> dict[str, int]:
        return {
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.n_tokens,
            "total_tokens": g.prompt_tokens + g.n_tokens,
        }

    def chunk(self, g: Gen, i: int) -> list[bytes]:
        return [sse(self._chunk(g, g.pieces[i], None))] if i < len(g.pieces) else []

    def tail(self, g: Gen) -> list[bytes]:
        final = self._chunk(g, "", g.done_reason)
        out = [sse(final)]
        if g.include_usage and self.modern:
            out.append(sse({**final, "choices": [], "usage": self._usage(g)}))
        return [*out, sse("[DONE]")]

    def body(self, g: Gen) -> web.StreamResponse:
        return json_response(
            {
                "id": f"cmpl-{g.oid}",
                "object": "text_completion",
                "created": g.created,
                "model": g.req_model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"text": g.text, "index": 0, "finish_reason": g.done_reason}],
                "usage": self._usage(g),
            },
            content_type=PLAIN_JSON_CT,
            newline=self.modern,
        )


class ResponsesRenderer:
    """/v1/responses: the event sequence of v1_responses_stream.txt, or one response object."""

    stream_headers = SSE_KEEPALIVE_HEADERS

    def __init__(self, response_id: str, item_id: str) -> None:
        self.response_id, self.item_id = response_id, item_id

    def response(self, g: Gen, *, done: bool, created_at: int) -> dict[str, Any]:
        """The response object in the non-streamed key order (the stream sorts them)."""
        req = g.request
        part = {"type": "output_text", "text": g.text, "annotations": [], "logprobs": []}
        output = (
            [
                {
                    "id": self.item_id,
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [part],
                }
            ]
            if done
            else []
        )
        usage = (
            {
                "input_tokens": g.prompt_tokens,
                "output_tokens": g.n_tokens,
                "total_tokens": g.prompt_tokens + g.n_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            }
            if done
            else None
        )
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": created_at,
            "completed_at": int(time.time()) if done else None,
            "status": "completed" if done else "in_progress",
            "incomplete_details": None,
            "model": g.req_model,
            "previous_response_id": req.get("previous_response_id"),
            "instructions": req.get("instructions"),
            "output": output,
            "error": None,
            "tools": req.get("tools") or [],
            "tool_choice": req.get("tool_choice", "auto"),
            "truncation": req.get("truncation", "disabled"),
            "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "text": req.get("text") or {"format": {"type": "text"}},
            "top_p": req.get("top_p", 1),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": req.get("temperature", 1),
            "reasoning": None,
            "usage": usage,
            "max_output_tokens": req.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": False,
            "service_tier": "default",
            "metadata": req.get("metadata") or {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def _event(self, g: Gen, event: str, data: dict[str, Any]) -> bytes:
        seq = g.state.get("seq", 0)
        g.state["seq"] = seq + 1
        return sse_event(event, {**data, "sequence_number": seq, "type": event})

    def _start(self, g: Gen) -> list[bytes]:
        if g.state.get("started"):
            return []
        g.state["started"] = True
        pending = self.response(g, done=False, created_at=g.created)
        part = {"annotations": [], "logprobs": [], "text": "", "type": "output_text"}
        return [
            self._event(g, "response.created", {"response": pending}),
            self._event(g, "response.in_progress", {"response": pending}),
            self._event(
                g,
                "response.output_item.added",
                {
                    "item": {
                        "content": [],
                        "id": self.item_id,
                        "role": "assistant",
                        "status": "in_progress",
                        "type": "message",
                    },
                    "output_index": 0,
                },
            ),
            self._event(
                g,
                "response.content_part.added",
                {"content_index": 0, "item_id": self.item_id, "output_index": 0, "part": part},
            ),
        ]

    def chunk(self, g: Gen, i: int) -> list[bytes]:
        if i >= len(g.pieces):
            return self._start(g)
        return [
            *self._start(g),
            self._event(
                g,
                "response.output_text.delta",
                {
                    "content_index": 0,
                    "delta": g.pieces[i],
                    "item_id": self.item_id,
                    "logprobs": [],
                    "output_index": 0,
                },
            ),
        ]

    def tail(self, g: Gen) -> list[bytes]:
        part = {"annotations": [], "logprobs": [], "text": g.text, "type": "output_text"}
        ids = {"content_index": 0, "item_id": self.item_id, "output_index": 0}
        return [
            *self._start(g),
            self._event(g, "response.output_text.done", {**ids, "logprobs": [], "text": g.text}),
            self._event(g, "response.content_part.done", {**ids, "part": part}),
            self._event(
                g,
                "response.output_item.done",
                {
                    "item": {
                        "content": [part],
                        "id": self.item_id,
                        "role": "assistant",
                        "status": "completed",
                        "type": "message",
                    },
                    "output_index": 0,
                },
            ),
            self._event(
                g,
                "response.completed",
                {"response": self.response(g, done=True, created_at=int(time.time()))},
            ),
        ]

    def body(self, g: Gen) -> web.StreamResponse:
        return json_response(
            self.response(g, done=True, created_at=g.created), content_type=PLAIN_JSON_CT, newline=True
        )


def _image_ok(url: str) -> bool:
    for prefix in _IMAGE_PREFIXES:
        if url.startswith(prefix):
            try:
                base64.b64decode(url[len(prefix) :], validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "invalid message format", from_writer=False) from None
            return True
    return False


def chat_parts(messages: list[Any], *, vision: bool) -> list[tuple[str, int]]:
    """openai.FromChatRequest: string content, or text/image_url parts (data: URLs only)."""
    parts: list[tuple[str, int]] = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise ApiError(400, "invalid message format", from_writer=False)
        role, content = str(msg.get("role", "user")), msg.get("content")
        if isinstance(content, str):
            parts.append((role, tokens_of(content)))
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    parts.append((role, tokens_of(part["text"])))
                elif kind == "image_url":
                    ref = part.get("image_url")
                    url = ref.get("url") if isinstance(ref, dict) else ref
                    if not isinstance(url, str) or not _image_ok(url):
                        raise ApiError(400, "invalid image input", from_writer=False)
                    parts.append((role, IMAGE_TOKENS if vision else 0))
                else:
                    raise ApiError(400, "invalid message format", from_writer=False)
        elif msg.get("tool_calls") is not None:
            parts.append((role, 0))
        else:
            raise ApiError(400, f"invalid message content type: {go_type_name(content)}", from_writer=False)
    return parts


def stop_list(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str)]
    return []


class OpenAIRoutes(Host):
    """The /v1 handlers; what they call of the other mixins is in host.py."""

    modern: bool
    fail_next: list[tuple[int, str]]
    models: dict[str, FakeModel]
    _modified: dict[str, int]

    async def _compat_body(self, request: web.Request) -> dict[str, Any]:
        """The body as the compat middleware binds it (``ShouldBindJSON``: an empty body is
        ``EOF``, a field of the wrong type Go's unmarshal error): gin's errors, not the writer's."""
        try:
            if not (await request.read()).strip():
                raise ApiError(400, "EOF")
            body = await self._body(request)
        except ApiError as e:
            raise ApiError(e.status, e.message, from_writer=False) from e
        struct_name, fields = REQUEST_FIELDS[request.path]
        check_go_fields(body, struct_name, fields)
        if body.get("stream") is True and request.path in ("/v1/messages", "/v1/responses"):
            request[SSE_ERROR_HEADERS] = True
        return body

    def _compat_model(self, body: dict[str, Any]) -> tuple[str, FakeModel]:
        name = body.get("model")
        if not isinstance(name, str) or self._find(name) is None:
            raise ApiError(404, f"model '{name if isinstance(name, str) else ''}' not found")
        return self._model(body)

    async def _oa_chat(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic_ns()
        body = await self._compat_body(request)
        if self.fail_next:
            status, msg = self.fail_next.pop(0)
            raise ApiError(status, msg)
        messages = body.get("messages")
        if self.modern and not messages:
            raise ApiError(400, "[] is too short - 'messages'", from_writer=False)
        req_model, model = self._compat_model(body) if self.modern else self._model(body)
        msgs = [m for m in messages or [] if isinstance(m, dict)]
        vision = "vision" in model.capabilities
        if self.modern:
            parts = chat_parts(messages or [], vision=vision)
        else:
            parts = [("user", tokens_of("".join(content_text(m.get("content")) for m in msgs)))]
        tools = body.get("tools")
        if self.modern and tools and "tools" not in model.capabilities:
            raise ApiError(400, f"registry.ollama.ai/library/{model.full_name} does not support tools")
        reasoning = body.get("reasoning")
        effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
        if self.modern and effort not in (None, "", "none") and "thinking" not in model.capabilities:
            raise ApiError(400, f'"{req_model}" does not support thinking')  # FromChatRequest sets think
        fmt = body.get("response_format") or {}
        json_format = isinstance(fmt, dict) and str(fmt.get("type", "")).lower() in (
            "json_object",
            "json_schema",
        )
        tool_calls = fake_tool_calls(tools, parts[-1][0] if parts else "user") if self.modern else []
        g = self._new_gen(
            "oa_chat",
            ChatCompletionRenderer(self.modern),
            request.path,
            req_model,
            self._runner_request(model, {}, None),
            parts,
            body.get("max_tokens"),
            body.get("stream") is True,
            t0,
            stop=stop_list(body.get("stop")),
            json_format=json_format and self.modern,
            tool_calls=tool_calls,
        )
        if tool_calls:
            g.pieces = []
        g.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._run(request, g)

    async def _oa_completion(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic_ns()
        body = await self._compat_body(request)
        req_model, model = self._compat_model(body) if self.modern else self._model(body)
        parts = [("user", tokens_of(content_text(body.get("prompt"))))]
        g = self._new_gen(
            "oa_completion",
            CompletionRenderer(self.modern),
            request.path,
            req_model,
            self._runner_request(model, {}, None),
            parts,
            body.get("max_tokens"),
            body.get("stream") is True,
            t0,
            stop=stop_list(body.get("stop")),
        )
        g.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._run(request, g)

    async def _oa_responses(self, request: web.Request) -> web.StreamResponse:
        """/v1/responses: ``input`` (a string or messages), ``instructions``, ``max_output_tokens``."""
        t0 = time.monotonic_ns()
        body = await self._compat_body(request)
        req_model, model = self._compat_model(body)
        items = body.get("input")
        parts: list[tuple[str, int]] = []
        if isinstance(body.get("instructions"), str):
            parts.append(("system", tokens_of(body["instructions"])))
        if isinstance(items, str):
            parts.append(("user", tokens_of(items)))
        elif isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    parts.append(
                        (str(item.get("role", "user")), tokens_of(content_text(item.get("content"))))
                    )
        elif items is not None:  # no input at all is an empty conversation (FromResponsesRequest)
            raise ApiError(400, "invalid input", from_writer=False)
        renderer = ResponsesRenderer(f"resp_{random.randrange(999999)}", f"msg_{random.randrange(999999)}")
        g = self._new_gen(
            "oa_responses",
            renderer,
            request.path,
            req_model,
            self._runner_request(model, {}, None),
            parts or [("user", 0)],
            body.get("max_output_tokens"),
            body.get("stream") is True,
            t0,
        )
        g.request = body
        return await self._run(request, g)

    async def _oa_embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._compat_body(request)
        fmt = body.get("encoding_format")
        if fmt and str(fmt).lower() not in ("float", "base64"):
            raise ApiError(
                400,
                f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].",
                from_writer=False,
            )
        raw = body.get("input")
        if raw == "":
            raw = [""]
        if raw is None or raw == []:
            raise ApiError(400, "invalid input", from_writer=False)
        name = body.get("model")
        if not isinstance(name, str) or self._find(name) is None:
            raise ApiError(404, f'model "{name}" not found, try pulling it first')
        req_model, model = self._model(body)
        texts = [str(x) for x in raw] if isinstance(raw, list) else [str(raw)]
        state = await self._acquire(self._runner_request(model, {}, None))
        try:
            if "embedding" not in model.capabilities:
                raise ApiError(501, EMBEDDINGS_UNSUPPORTED)
            dims = int(model.info("embedding_length", 8))
            want = body.get("dimensions")
            if isinstance(want, int) and 0 < want < dims:
                dims = want
            data = []
            for i, t in enumerate(texts):
                vec = embedding(t, dims)
                if str(fmt or "").lower() == "base64":
                    data.append(
                        {
                            "object": "embedding",
                            "embedding": base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode(),
                            "index": i,
                        }
                    )
                else:
                    data.append({"object": "embedding", "embedding": vec, "index": i})
            tokens = sum(min(max(1, tokens_of(t)), state.num_ctx) for t in texts)
        finally:
            self._release(state)
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": req_model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            content_type=PLAIN_JSON_CT,
            newline=True,
        )

    async def _oa_models(self, request: web.Request) -> web.StreamResponse:
        order = (
            sorted(self.models, key=lambda full: -self._modified[full]) if self.modern else list(self.models)
        )
        data = [
            {"id": full, "object": "model", "created": self._modified[full] // 10**9, "owned_by": "library"}
            for full in order
        ]
        return json_response(
            {"object": "list", "data": data}, content_type=PLAIN_JSON_CT, newline=self.modern
        )

    async def _oa_model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        m = self._find(name)
        if m is None:
            raise ApiError(404, f"model '{full_name(name) if self._at_least_030() else name}' not found")
        return json_response(
            {
                "id": name,
                "object": "model",
                "created": self._modified[m.full_name] // 10**9,
                "owned_by": "library",
            },
            content_type=PLAIN_JSON_CT,
            newline=self.modern,
        )
