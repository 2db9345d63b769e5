"""``/v1/responses`` to ``/api/chat`` and back, as Ollama's ``ResponsesMiddleware`` does.

Request: ``openai.FromResponsesRequest`` (instructions as a system message, input items:
messages with text, images and replayed output text, function calls and their outputs,
reasoning carried into the next assistant message; ``text.format`` json_schema as ``format``;
namespace tools expanded). Reply: ``openai.ToResponse`` here, the stream in
:mod:`proxy.compat.openai_responses_stream`. ``previous_response_id`` is not supported by
Ollama 0.33 either (it is echoed as null); the built-in ``web_search`` tool needs Ollama's own
cloud search, so such requests come back :class:`~proxy.compat.native.Unsupported`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.compat.errors import CompatError, openai_error, openai_native_error
from proxy.compat.godecode import (
    BOOL,
    FLOAT64,
    INT,
    MAP_ANY,
    RAW,
    STRING,
    CustomDecodeError,
    GoDecodeError,
    GoType,
    anonymous_struct,
    custom,
    decode,
    model_reader,
    slice_of,
    struct,
)
from proxy.compat.gojson import GoJSONError, go_map_deep, unmarshal
from proxy.compat.native import (
    GO_ZERO_UNIX,
    Clock,
    IdSource,
    NativePath,
    NativeRequest,
    RandomIds,
    Unsupported,
    default_clock,
    now_seconds,
    options_map,
    ordered_body,
    unix_seconds,
)
from proxy.compat.openai_chat import REASONING_EFFORTS, native_chat_message
from proxy.compat.openai_common import (
    TranslationError,
    base64_of,
    decode_image_url,
    native_message,
    openai_tool_calls,
)
from proxy.compat.openai_common import parse_body as parse_body
from proxy.compat.sse import EVENT_STREAM_HEADERS, JSON_HEADERS

PATH = "/v1/responses"
NATIVE_PATH: NativePath = "/api/chat"

_TYPE_ONLY = anonymous_struct({"type": ("Type", STRING)})
_TYPE_AND_ROLE = anonymous_struct({"type": ("Type", STRING), "role": ("Role", STRING)})
_MESSAGE_AUX = anonymous_struct(
    {"type": ("Type", STRING), "role": ("Role", STRING), "content": ("Content", RAW)}
)
_OUTPUT_AUX = anonymous_struct(
    {"type": ("Type", STRING), "call_id": ("CallID", STRING), "output": ("Output", RAW)}
)


def _tool_type(depth: int) -> GoType:
    fields: dict[str, GoType] = {
        "type": STRING,
        "name": STRING,
        "description": STRING,
        "strict": BOOL,
        "parameters": MAP_ANY,
    }
    if depth > 0:
        fields["tools"] = slice_of(_tool_type(depth - 1))
    return struct("openai.ResponsesTool", fields)


TOOL = _tool_type(3)
"""``ResponsesTool``; namespaces nest, three levels are plenty."""


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "number"


def _unmarshal(value: Any, go_type: GoType) -> Any:
    """A nested ``json.Unmarshal`` inside a Go ``UnmarshalJSON``: its own error context."""
    try:
        return decode(value, go_type)
    except GoDecodeError as error:
        raise CustomDecodeError(str(error)) from None


_CONTENT_TYPES: dict[str, GoType] = {
    "input_text": struct("openai.ResponsesTextContent", {"type": STRING, "text": STRING}),
    "output_text": struct("openai.ResponsesOutputTextContent", {"type": STRING, "text": STRING}),
    "input_image": struct(
        "openai.ResponsesImageContent",
        {"type": STRING, "detail": STRING, "file_id": STRING, "image_url": STRING},
    ),
    "input_file": struct(
        "openai.ResponsesFileContent",
        {"type": STRING, "file_data": STRING, "file_id": STRING, "file_url": STRING, "filename": STRING},
    ),
}


def _content_item(raw: Any) -> dict[str, Any]:
    kind = _unmarshal(raw, _TYPE_ONLY).get("type", "")
    if kind not in _CONTENT_TYPES:
        raise CustomDecodeError(f"unknown content type: {kind}")
    return {**_unmarshal(raw, _CONTENT_TYPES[kind]), "type": kind}


def _content_list(raw: Any, field: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise CustomDecodeError(
            f"{field} must be a string or array: json: cannot unmarshal {_json_kind(raw)} "
            "into Go value of type []json.RawMessage"
        )
    items = []
    for index, item in enumerate(raw):
        try:
            items.append(_content_item(item))
        except CustomDecodeError as error:
            raise CustomDecodeError(f"{field}[{index}]: {error}") from None
    return items


def _input_message(raw: Any) -> dict[str, Any]:
    aux = _unmarshal(raw, _MESSAGE_AUX)
    message: dict[str, Any] = {"type": "message", "role": aux.get("role", ""), "content": []}
    if "content" not in aux:
        return message
    content = aux["content"]
    if content is None or isinstance(content, str):
        message["content"] = [{"type": "input_text", "text": content or ""}]
    else:
        message["content"] = _content_list(content, "content")
    return message


def _function_call_output(raw: Any) -> dict[str, Any]:
    aux = _unmarshal(raw, _OUTPUT_AUX)
    item: dict[str, Any] = {"type": "function_call_output", "call_id": aux.get("call_id", ""), "output": ""}
    output = aux.get("output")
    if output is None or isinstance(output, str):
        item["output"] = output or ""
        return item
    parts = _content_list(output, "output")
    item["output_items"] = parts
    item["output"] = "".join(p.get("text", "") for p in parts if p["type"] in ("input_text", "output_text"))
    return item


_FUNCTION_CALL = struct(
    "openai.ResponsesFunctionCall",
    {"id": STRING, "type": STRING, "call_id": STRING, "name": STRING, "arguments": STRING},
)
_REASONING = struct(
    "openai.ResponsesReasoningInput",
    {
        "id": STRING,
        "type": STRING,
        "summary": slice_of(struct("openai.ResponsesReasoningSummary", {"type": STRING, "text": STRING})),
        "encrypted_content": STRING,
    },
)
_WEB_SEARCH_CALL = struct(
    "openai.ResponsesWebSearchCall",
    {
        "id": STRING,
        "type": STRING,
        "status": STRING,
        "action": struct("openai.ResponsesWebSearchAction", {"type": STRING, "query": STRING}),
    },
)


def _input_item(raw: Any) -> dict[str, Any]:
    peek = _unmarshal(raw, _TYPE_AND_ROLE)
    kind = peek.get("type", "")
    if not kind and peek.get("role"):
        kind = "message"
    if kind == "message":
        return _input_message(raw)
    if kind == "function_call_output":
        return _function_call_output(raw)
    simple = {"function_call": _FUNCTION_CALL, "reasoning": _REASONING, "web_search_call": _WEB_SEARCH_CALL}
    if kind in simple:
        return {**_unmarshal(raw, simple[kind]), "type": kind}
    if not kind:
        raise CustomDecodeError("input item missing required 'type' field")
    raise CustomDecodeError(f"unknown input item type: {go_quote(kind)}")


def _input(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        return {"text": raw, "items": []}
    if not isinstance(raw, list):
        raise CustomDecodeError(
            f"input must be a string or array: json: cannot unmarshal {_json_kind(raw)} "
            "into Go value of type []json.RawMessage"
        )
    items = []
    for index, item in enumerate(raw):
        try:
            items.append(_input_item(item))
        except CustomDecodeError as error:
            raise CustomDecodeError(f"input[{index}]: {error}") from None
    return {"text": "", "items": items}


REQUEST = struct(
    "openai.ResponsesRequest",
    {
        "model": STRING,
        "background": BOOL,
        "conversation": RAW,
        "include": slice_of(STRING),
        "input": custom("openai.ResponsesInput", _input),
        "instructions": STRING,
        "max_output_tokens": INT,
        "reasoning": struct(
            "openai.ResponsesReasoning", {"effort": STRING, "generate_summary": STRING, "summary": STRING}
        ),
        "temperature": FLOAT64,
        "text": struct(
            "openai.ResponsesText",
            {
                "format": struct(
                    "openai.ResponsesTextFormat",
                    {"type": STRING, "name": STRING, "schema": RAW, "strict": BOOL},
                )
            },
        ),
        "top_p": FLOAT64,
        "truncation": STRING,
        "tools": slice_of(TOOL),
        "stream": BOOL,
    },
)


@dataclass(frozen=True)
class ResponsesReply:
    """The ids Ollama minted and the request fields a Responses reply echoes back."""

    response_id: str
    """``resp_<n>``, n from Go's ``rand.Intn(999999)``."""
    item_id: str
    """``msg_<n>``: the id of the message output item."""
    instructions: str
    truncation: str | None
    tools: tuple[Mapping[str, Any], ...]
    text_format: Mapping[str, Any] | None
    reasoning_effort: str
    reasoning_summary: str
    top_p: float | None
    temperature: float | None
    max_output_tokens: int | None
    background: bool


def go_quote(text: str) -> str:
    """Go's ``%q`` for a plain string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped.replace(chr(13), chr(92) + "r")}"'


model_of = model_reader("openai.ResponsesRequest")


def to_native(
    body: Any, *, ids: IdSource | None = None
) -> NativeRequest[ResponsesReply] | CompatError | Unsupported:
    """The ``/api/chat`` request Ollama makes of this body, or its 400 error reply."""
    try:
        request = decode(body, REQUEST)
    except GoDecodeError as error:
        return openai_error(400, str(error))
    tools = request.get("tools", [])
    if any(tool.get("type") == "web_search" for tool in tools):
        return Unsupported("the built-in web_search tool runs inside Ollama")
    try:
        messages = _messages(request)
        think = _think(request.get("reasoning", {}).get("effort", ""))
        native_tools = [expanded for tool in tools for expanded in _expand_tool(tool)]
    except TranslationError as error:
        return openai_error(400, str(error))
    stream = bool(request.get("stream", False))
    fields: dict[str, Any] = {"model": request.get("model", ""), "messages": messages, "stream": stream}
    text_format = request.get("text", {}).get("format")
    if text_format is not None and text_format.get("type") == "json_schema" and "schema" in text_format:
        fields["format"] = text_format["schema"]
    if native_tools:
        fields["tools"] = native_tools
    fields["options"] = _options(request)
    if think is not None:
        fields["think"] = think
    source = ids or RandomIds()
    reasoning = request.get("reasoning", {})
    reply = ResponsesReply(
        response_id=f"resp_{source.intn(999999)}",
        item_id=f"msg_{source.intn(999999)}",
        instructions=request.get("instructions", ""),
        truncation=request.get("truncation"),
        tools=tuple(tools) if "tools" in request else (),
        text_format=text_format,
        reasoning_effort=reasoning.get("effort", ""),
        reasoning_summary=reasoning.get("summary", ""),
        top_p=request.get("top_p"),
        temperature=request.get("temperature"),
        max_output_tokens=request.get("max_output_tokens"),
        background=bool(request.get("background", False)),
    )
    return NativeRequest(
        path=NATIVE_PATH,
        body=ordered_body(NATIVE_PATH, fields),
        reply=reply,
        stream=stream,
        model=fields["model"],
    )


def _think(effort: str) -> str | bool | None:
    if not effort:
        return None
    if effort not in REASONING_EFFORTS:
        raise TranslationError(
            f'invalid reasoning value: \'{effort}\' (must be "high", "medium", "low", "max", or "none")'
        )
    return False if effort == "none" else effort


def _options(request: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"temperature": request.get("temperature", 1.0)}
    if "top_p" in request:
        options["top_p"] = request["top_p"]
    if "max_output_tokens" in request:
        options["num_predict"] = request["max_output_tokens"]
    return options_map(options)


def _expand_tool(tool: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``convertTools``: a namespace becomes its members under ``namespace.member`` names."""
    if tool.get("type") != "namespace":
        return [
            {
                "type": tool.get("type", ""),
                "function": {
                    "name": tool.get("name", ""),
                    "description": tool.get("description", ""),
                    "parameters": tool.get("parameters", {}),
                },
            }
        ]
    namespace = tool.get("name", "")
    expanded = []
    for member in tool.get("tools", []):
        for converted in _expand_tool(member):
            name = converted["function"]["name"]
            if namespace and not name.startswith(namespace + "."):
                converted["function"]["name"] = f"{namespace}.{name}"
            expanded.append(converted)
    return expanded


def _content(parts: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
    text = ""
    images = []
    for part in parts:
        kind = part["type"]
        if kind in ("input_text", "output_text"):
            text += part.get("text", "")
        elif kind == "input_image":
            if part.get("image_url"):
                images.append(base64_of(decode_image_url(part["image_url"])))
        elif kind == "input_file":
            raise TranslationError("file inputs are not currently supported")
    return text, images


def _messages(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``FromResponsesRequest``'s conversation: system, user text, then the input items."""
    messages: list[dict[str, Any]] = []
    if request.get("instructions"):
        messages.append(native_chat_message("system", request["instructions"]))
    given = request.get("input", {"text": "", "items": []})
    if given["text"]:
        messages.append(native_chat_message("user", given["text"]))
    items = given["items"]
    pending_thinking = ""
    for index, item in enumerate(items):
        kind = item["type"]
        if kind == "reasoning":
            pending_thinking = item.get("encrypted_content", "")
        elif kind == "message":
            text, images = _content(item["content"])
            thinking = ""
            if item["role"] == "assistant" and pending_thinking:
                thinking, pending_thinking = pending_thinking, ""
            following = items[index + 1] if index + 1 < len(items) else None
            answers = (
                following["call_id"] if following and following["type"] == "function_call_output" else ""
            )
            if (
                item["role"] == "assistant"
                and answers
                and _merge_into_call(messages, answers, text, images, thinking)
            ):
                continue
            messages.append(native_chat_message(item["role"], text, thinking=thinking, images=images))
        elif kind == "function_call":
            pending_thinking = _add_function_call(messages, item, pending_thinking)
        elif kind == "function_call_output":
            text, images = item["output"], []
            if item.get("output_items"):
                text, images = _content(item["output_items"])
            messages.append(native_chat_message("tool", text, images=images, tool_call_id=item["call_id"]))
    if pending_thinking:
        messages.append(native_chat_message("assistant", "", thinking=pending_thinking))
    return messages


def _merge_into_call(
    messages: list[dict[str, Any]], call_id: str, text: str, images: list[str], thinking: str
) -> bool:
    """Keep an assistant message replayed between a call and its output in the call's message."""
    if not messages:
        return False
    last = messages[-1]
    if last["role"] != "assistant" or not last.get("tool_calls"):
        return False
    if not any(call.get("id", "") == call_id for call in last["tool_calls"]):
        return False
    content = last["content"]
    if content and text:
        content += "\n"
    messages[-1] = native_chat_message(
        "assistant",
        content + text,
        thinking=thinking or last.get("thinking", ""),
        images=[*last.get("images", []), *images],
        tool_calls=last["tool_calls"],
        tool_name=last.get("tool_name", ""),
        tool_call_id=last.get("tool_call_id", ""),
    )
    return True


def _add_function_call(messages: list[dict[str, Any]], item: Mapping[str, Any], pending_thinking: str) -> str:
    arguments: Any = {}
    if item.get("arguments"):
        try:
            arguments = unmarshal(item["arguments"])
        except GoJSONError as error:
            raise TranslationError(f"failed to parse function call arguments: {error}") from None
        if arguments is not None and not isinstance(arguments, dict):
            raise TranslationError(
                "failed to parse function call arguments: json: cannot unmarshal "
                f"{_json_kind(arguments)} into Go value of type api.ToolCallFunctionArguments"
            )
    call: dict[str, Any] = {}
    if item.get("call_id"):
        call["id"] = item["call_id"]
    call["function"] = {"name": item.get("name", ""), "arguments": arguments or {}}
    if messages and messages[-1]["role"] == "assistant":
        last = messages[-1]
        messages[-1] = native_chat_message(
            "assistant",
            last["content"],
            thinking=pending_thinking or last.get("thinking", ""),
            images=last.get("images", []),
            tool_calls=[*last.get("tool_calls", []), call],
            tool_name=last.get("tool_name", ""),
            tool_call_id=last.get("tool_call_id", ""),
        )
    else:
        messages.append(native_chat_message("assistant", "", thinking=pending_thinking, tool_calls=[call]))
    return ""


def response_headers(stream: bool) -> dict[str, str]:
    """The headers Ollama's reply carries (besides Date and Content-Length/Transfer-Encoding)."""
    return dict(EVENT_STREAM_HEADERS if stream else JSON_HEADERS)


def error_from_native(status: int, body: bytes, request: NativeRequest[ResponsesReply]) -> CompatError:
    """A native error answer as this route sends it; a stream keeps its no-cache headers."""
    extra = {k: v for k, v in EVENT_STREAM_HEADERS.items() if k != "Content-Type"} if request.stream else None
    return openai_native_error(status, body, extra)


def echo_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A request tool as ``ResponsesTool`` marshals it in a whole reply."""
    echoed: dict[str, Any] = {
        "type": tool.get("type", ""),
        "name": tool.get("name", ""),
        "description": tool.get("description"),
        "strict": tool.get("strict"),
        "parameters": go_map_deep(tool["parameters"]) if tool.get("parameters") is not None else None,
    }
    if tool.get("tools"):
        echoed["tools"] = [echo_tool(member) for member in tool["tools"]]
    return echoed


def _text_format(reply: ResponsesReply) -> dict[str, Any]:
    if reply.text_format is None:
        return {"type": "text"}
    text_format: dict[str, Any] = {"type": reply.text_format.get("type", "")}
    if reply.text_format.get("name"):
        text_format["name"] = reply.text_format["name"]
    if "schema" in reply.text_format:
        text_format["schema"] = reply.text_format["schema"]
    if "strict" in reply.text_format:
        text_format["strict"] = reply.text_format["strict"]
    return text_format


def response_usage(native: Mapping[str, Any]) -> tuple[int, int, int]:
    """Prompt, output and cached-prompt token counts of a native final object."""
    counts = [native.get(name) for name in ("prompt_eval_count", "eval_count", "prompt_eval_cached_count")]
    prompt, output, cached = (c if isinstance(c, int) and not isinstance(c, bool) else 0 for c in counts)
    return prompt, output, cached


def from_native(
    native: Mapping[str, Any], request: NativeRequest[ResponsesReply], *, clock: Clock = default_clock
) -> dict[str, Any]:
    """``ToResponse`` plus ``completed_at``: a whole native answer as a Responses response."""
    reply = request.reply
    message = native_message(native)
    output: list[dict[str, Any]] = []
    thinking = message.get("thinking")
    if isinstance(thinking, str) and thinking:
        output.append(
            {
                "id": f"rs_{reply.response_id}",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": thinking}],
                "encrypted_content": thinking,
            }
        )
    tool_calls = openai_tool_calls(message.get("tool_calls"))
    for index, call in enumerate(tool_calls):
        item: dict[str, Any] = {
            "id": f"fc_{reply.response_id}_{index}",
            "type": "function_call",
            "status": "completed",
        }
        if call["id"]:
            item["call_id"] = call["id"]
        if call["function"]["name"]:
            item["name"] = call["function"]["name"]
        item["arguments"] = call["function"]["arguments"]
        output.append(item)
    if not tool_calls:
        content = message.get("content")
        output.append(
            {
                "id": reply.item_id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": content if isinstance(content, str) else "",
                        "annotations": [],
                        "logprobs": [],
                    }
                ],
            }
        )
    reasoning: dict[str, Any] | None = None
    if reply.reasoning_effort or reply.reasoning_summary:
        reasoning = {}
        if reply.reasoning_effort:
            reasoning["effort"] = reply.reasoning_effort
        if reply.reasoning_summary:
            reasoning["summary"] = reply.reasoning_summary
    prompt, completion, cached = response_usage(native)
    created = unix_seconds(native.get("created_at"))
    return {
        "id": reply.response_id,
        "object": "response",
        "created_at": GO_ZERO_UNIX if created is None else created,
        "completed_at": now_seconds(clock),
        "status": "completed",
        "incomplete_details": None,
        "model": request.model,
        "previous_response_id": None,
        "instructions": reply.instructions or None,
        "output": output,
        "error": None,
        "tools": [echo_tool(tool) for tool in reply.tools],
        "tool_choice": "auto",
        "truncation": reply.truncation if reply.truncation is not None else "disabled",
        "parallel_tool_calls": True,
        "text": {"format": _text_format(reply)},
        "top_p": reply.top_p if reply.top_p is not None else 1.0,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": reply.temperature if reply.temperature is not None else 1.0,
        "reasoning": reasoning,
        "usage": {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "max_output_tokens": reply.max_output_tokens,
        "max_tool_calls": None,
        "store": False,
        "background": reply.background,
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }
