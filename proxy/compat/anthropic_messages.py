"""``/v1/messages`` to ``/api/chat`` and back, as Ollama's ``AnthropicMessagesMiddleware`` does.

Request: the middleware's checks (``model``, a positive ``max_tokens``, some ``messages``),
then ``anthropic.FromMessagesRequest``: the system prompt (a string or text blocks) as a
system message, text, base64 images, ``tool_use`` as tool calls and ``tool_result`` as tool
messages, thinking blocks, ``max_tokens`` as ``num_predict``, ``stop_sequences`` as ``stop``,
``thinking.type: enabled`` as ``think``. Reply: ``anthropic.ToMessagesResponse`` here, the
stream in :mod:`proxy.compat.anthropic_stream`. Errors carry a fresh ``req_`` id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.compat.errors import (
    GIN_JSON,
    CompatError,
    anthropic_error_body,
    reply_error,
)
from proxy.compat.godecode import (
    ANY,
    BOOL,
    FLOAT64,
    INT,
    RAW,
    STRING,
    GoDecodeError,
    decode,
    go_type_name,
    model_reader,
    slice_of,
    struct,
)
from proxy.compat.gojson import GoJSONError, TooDeep, dumps, go_map_deep, loads
from proxy.compat.native import (
    IdSource,
    NativePath,
    NativeRequest,
    RandomIds,
    Unsupported,
    options_map,
    ordered_body,
)
from proxy.compat.openai_chat import native_chat_message
from proxy.compat.openai_common import TranslationError, base64_of, go_base64_decode, native_message
from proxy.compat.openai_responses import go_quote
from proxy.compat.sse import EVENT_STREAM_HEADERS, JSON_HEADERS

PATH = "/v1/messages"
NATIVE_PATH: NativePath = "/api/chat"

TOOL = struct("anthropic.Tool", {"type": STRING, "name": STRING, "description": STRING, "input_schema": RAW})
REQUEST = struct(
    "anthropic.MessagesRequest",
    {
        "model": STRING,
        "max_tokens": INT,
        "messages": slice_of(struct("anthropic.MessageParam", {"role": STRING, "content": ANY})),
        "system": ANY,
        "stream": BOOL,
        "temperature": FLOAT64,
        "top_p": FLOAT64,
        "top_k": INT,
        "stop_sequences": slice_of(STRING),
        "tools": slice_of(TOOL),
        "tool_choice": struct(
            "anthropic.ToolChoice", {"type": STRING, "name": STRING, "disable_parallel_tool_use": BOOL}
        ),
        "thinking": struct("anthropic.ThinkingConfig", {"type": STRING, "budget_tokens": INT}),
        "metadata": struct("anthropic.Metadata", {"user_id": STRING}),
    },
)


@dataclass(frozen=True)
class MessagesReply:
    """What the Messages reply translators need besides the native answer."""

    message_id: str
    """``msg_`` and 24 hex digits (12 random bytes)."""
    estimated_input_tokens: int
    """``EstimateInputTokens``: bytes/4 of the request, for ``message_start`` before real counts."""


def new_request_id(ids: IdSource) -> str:
    """``req_`` and 24 hex digits, as every Anthropic-style error carries."""
    return f"req_{ids.hex_bytes(12)}"


def refuse(status: int, message: str, ids: IdSource | None = None) -> CompatError:
    """The middleware's ``AbortWithStatusJSON`` in Anthropic's shape."""
    source = ids or RandomIds()
    return reply_error(status, anthropic_error_body(status, message, new_request_id(source)), "middleware")


def parse_body(raw: bytes, *, ids: IdSource | None = None) -> Any | CompatError | Unsupported:
    """The request body as gin reads it, or Ollama's 400 for a body that is not JSON (or one
    nested past Go's limit); ``Unsupported`` for one too deep to translate."""
    try:
        return loads(raw)
    except GoJSONError as error:
        return refuse(400, str(error), ids)
    except TooDeep as error:
        return Unsupported(str(error))


model_of = model_reader("anthropic.MessagesRequest")


def to_native(
    body: Any, *, ids: IdSource | None = None
) -> NativeRequest[MessagesReply] | CompatError | Unsupported:
    """The ``/api/chat`` request Ollama makes of this body, or its 400 error reply."""
    source = ids or RandomIds()
    try:
        request = decode(body, REQUEST)
    except GoDecodeError as error:
        return refuse(400, str(error), source)
    if not request.get("model"):
        return refuse(400, "model is required", source)
    if request.get("max_tokens", 0) <= 0:
        return refuse(400, "max_tokens is required and must be positive", source)
    if not request.get("messages"):
        return refuse(400, "messages is required", source)
    try:
        fields = _chat_fields(request)
    except TranslationError as error:
        return refuse(400, str(error), source)
    if any(tool.get("type", "").startswith("web_search") for tool in request.get("tools", [])):
        return Unsupported("the built-in web_search tool runs inside Ollama")
    reply = MessagesReply(
        message_id=f"msg_{source.hex_bytes(12)}", estimated_input_tokens=estimate_input_tokens(request)
    )
    return NativeRequest(
        path=NATIVE_PATH,
        body=ordered_body(NATIVE_PATH, fields),
        reply=reply,
        stream=bool(request.get("stream", False)),
        model=request["model"],
        relax_thinking=True,
    )


def _chat_fields(request: Mapping[str, Any]) -> dict[str, Any]:
    """``FromMessagesRequest``."""
    messages = _system_messages(request.get("system"))
    for message in request["messages"]:
        messages.extend(_convert_message(message))
    options: dict[str, Any] = {"num_predict": request["max_tokens"]}
    for name in ("temperature", "top_p", "top_k"):
        if name in request:
            options[name] = request[name]
    if request.get("stop_sequences"):
        options["stop"] = request["stop_sequences"]
    fields: dict[str, Any] = {
        "model": request["model"],
        "messages": messages,
        "stream": bool(request.get("stream", False)),
    }
    tools = [_convert_tool(tool) for tool in request.get("tools", [])]
    if tools:
        fields["tools"] = tools
    fields["options"] = options_map(options)
    thinking = request.get("thinking")
    if thinking is not None and thinking.get("type") == "enabled":
        fields["think"] = True
    return fields


def _system_messages(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [native_chat_message("system", system)] if system else []
    if isinstance(system, list):
        text = "".join(
            block["text"]
            for block in system
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
        return [native_chat_message("system", text)] if text else []
    return []


def _convert_message(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    role = message.get("role", "").lower()
    content = message.get("content")
    if isinstance(content, str):
        return [native_chat_message(role, content)]
    if not isinstance(content, list):
        raise TranslationError(f"invalid message content type: {go_type_name(content)}")
    text = ""
    images: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    thinking = ""
    tool_results: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            raise TranslationError("invalid content block format")
        kind = block.get("type") if isinstance(block.get("type"), str) else ""
        if kind == "text":
            if isinstance(block.get("text"), str):
                text += block["text"]
        elif kind == "image":
            images.append(_image(block))
        elif kind == "tool_use":
            tool_calls.append(_tool_call(block))
        elif kind == "tool_result":
            tool_results.append(_tool_result(block))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking = block["thinking"]
    converted = []
    if text or images or tool_calls or thinking:
        converted.append(
            native_chat_message(role, text, thinking=thinking, images=images, tool_calls=tool_calls)
        )
    return converted + tool_results


def _image(block: Mapping[str, Any]) -> str:
    source = block.get("source")
    if not isinstance(source, dict):
        raise TranslationError("invalid image source")
    source_type = source.get("type") if isinstance(source.get("type"), str) else ""
    if source_type != "base64":
        raise TranslationError(f"invalid image source type: {source_type}. Only base64 images are supported.")
    data = source.get("data") if isinstance(source.get("data"), str) else ""
    try:
        return base64_of(go_base64_decode(str(data)))
    except TranslationError as error:
        raise TranslationError(f"invalid base64 image data: {error}") from None


def _tool_call(block: Mapping[str, Any]) -> dict[str, Any]:
    call_id = block.get("id")
    if not isinstance(call_id, str):
        raise TranslationError("tool_use block missing required 'id' field")
    name = block.get("name")
    if not isinstance(name, str):
        raise TranslationError("tool_use block missing required 'name' field")
    arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
    call: dict[str, Any] = {"id": call_id} if call_id else {}
    call["function"] = {"name": name, "arguments": arguments}
    return call


def _tool_result(block: Mapping[str, Any]) -> dict[str, Any]:
    tool_use_id = block.get("tool_use_id") if isinstance(block.get("tool_use_id"), str) else ""
    content = block.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    else:
        text = ""
    return native_chat_message("tool", text, tool_call_id=str(tool_use_id))


def _convert_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    schema = tool.get("input_schema")
    if schema is not None and not isinstance(schema, dict):
        kind = {str: "string", bool: "bool", list: "array"}.get(type(schema), "number")
        raise TranslationError(
            f"invalid input_schema for tool {go_quote(tool.get('name', ''))}: "
            f"json: cannot unmarshal {kind} into Go value of type api.ToolFunctionParameters"
        )
    return {
        "type": "function",
        "function": {
            "name": tool.get("name", ""),
            "description": tool.get("description", ""),
            "parameters": schema or {},
        },
    }


def estimate_input_tokens(request: Mapping[str, Any]) -> int:
    """``EstimateInputTokens``: the request's length in bytes over 4, at least 1."""
    total = 0
    if "system" in request:
        total += _count_any(request["system"])
    for message in request.get("messages", []):
        total += len(message.get("role", "").encode("utf-8")) + _count_any(message.get("content"))
    for tool in request.get("tools", []):
        schema = tool.get("input_schema")
        schema_bytes = len(dumps(schema)) if "input_schema" in tool else 0
        total += len(tool.get("name", "").encode()) + len(tool.get("description", "").encode()) + schema_bytes
    tokens = total // 4
    if tokens == 0 and (request.get("messages") or "system" in request):
        tokens = 1
    return tokens


def _count_any(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode("utf-8"))
    if isinstance(content, list):
        return sum(_count_block(block) for block in content)
    return len(dumps(go_map_deep(content)))


def _count_block(block: Any) -> int:
    if not isinstance(block, dict):
        return len(block.encode("utf-8")) if isinstance(block, str) else 0
    total = 0
    for name in ("text", "thinking"):
        if isinstance(block.get(name), str):
            total += len(block[name].encode("utf-8"))
    if block.get("type") in ("tool_use", "tool_result"):
        total += len(dumps(go_map_deep(block)))
    return total


def response_headers(stream: bool) -> dict[str, str]:
    """The headers Ollama's reply carries (besides Date and Content-Length/Transfer-Encoding)."""
    return dict(EVENT_STREAM_HEADERS if stream else JSON_HEADERS)


def error_from_native(
    status: int, body: bytes, request: NativeRequest[MessagesReply], *, ids: IdSource | None = None
) -> CompatError:
    """``AnthropicWriter.writeError``: a native error answer in Anthropic's shape.

    A body that is not ``{"error": "..."}`` makes Ollama's writer fail, and the client gets the
    status with an empty body.
    """
    extra = {k: v for k, v in EVENT_STREAM_HEADERS.items() if k != "Content-Type"} if request.stream else None
    message = _native_message(body)
    if message is None:
        return CompatError(
            status=status, body=b"", headers=dict(sorted({**(extra or {}), "Content-Type": GIN_JSON}.items()))
        )
    payload = anthropic_error_body(status, message, new_request_id(ids or RandomIds()))
    return reply_error(status, payload, "writer", extra)


def _native_message(body: bytes) -> str | None:
    try:
        decoded = loads(body)
    except GoJSONError:
        return None
    if decoded is None:
        return ""
    if not isinstance(decoded, dict):
        return None
    message = decoded.get("error")
    if message is None:
        return ""
    return message if isinstance(message, str) else None


def stop_reason(done_reason: str, has_tool_calls: bool) -> str:
    """``mapStopReason``: a native ``done_reason`` as Anthropic's ``stop_reason``."""
    if has_tool_calls:
        return "tool_use"
    if done_reason == "stop":
        return "end_turn"
    if done_reason == "length":
        return "max_tokens"
    return "stop_sequence" if done_reason else ""


def content_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The thinking, text and tool_use blocks of a native message, in Ollama's order."""
    blocks: list[dict[str, Any]] = []
    thinking = message.get("thinking")
    if isinstance(thinking, str) and thinking:
        blocks.append({"type": "thinking", "thinking": thinking})
    text = message.get("content")
    if isinstance(text, str) and text:
        blocks.append({"type": "text", "text": text})
    for call in _calls(message):
        block: dict[str, Any] = {"type": "tool_use"}
        if call.get("id"):
            block["id"] = call["id"]
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        assert isinstance(function, dict)
        if function.get("name"):
            block["name"] = function["name"]
        arguments = function.get("arguments")
        block["input"] = arguments if arguments is not None else {}
        blocks.append(block)
    return blocks


def _calls(message: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    calls = message.get("tool_calls")
    return [call for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []


def from_native(native: Mapping[str, Any], request: NativeRequest[MessagesReply]) -> dict[str, Any]:
    """``ToMessagesResponse``: a whole native ``/api/chat`` answer as an Anthropic message."""
    message = native_message(native)
    blocks = content_blocks(message)
    reason = stop_reason(_string(native.get("done_reason")), bool(_calls(message)))
    response: dict[str, Any] = {
        "id": request.reply.message_id,
        "type": "message",
        "role": "assistant",
        "model": _string(native.get("model")),
        "content": blocks or None,
    }
    if reason:
        response["stop_reason"] = reason
    response["usage"] = {
        "input_tokens": _int(native.get("prompt_eval_count")),
        "output_tokens": _int(native.get("eval_count")),
    }
    return response


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
