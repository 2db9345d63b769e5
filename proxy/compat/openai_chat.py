"""``/v1/chat/completions`` to ``/api/chat`` and back, as Ollama's ``ChatMiddleware`` does.

Request: ``openai.FromChatRequest`` (messages and content parts, images, tool calls and tool
results, ``response_format``, ``stop``, ``max_tokens`` and the samplers, reasoning effort).
Reply: ``openai.ToChatCompletion`` for a whole answer; for a stream, ``ChatWriter``: the role
only on the first chunk, no content chunk for the metrics-only final line, then a finish chunk
with an empty delta, the usage chunk when asked for, and ``data: [DONE]``. Every chunk carries
the ``created`` of the first native line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.compat.errors import CompatError, openai_error, openai_native_error
from proxy.compat.godecode import (
    ANY,
    BOOL,
    FLOAT64,
    INT,
    RAW,
    STRING,
    GoDecodeError,
    GoType,
    anonymous_struct,
    decode,
    go_type_name,
    model_reader,
    slice_of,
    struct,
)
from proxy.compat.native import (
    GO_ZERO_UNIX,
    Clock,
    IdSource,
    NativePath,
    NativeRequest,
    RandomIds,
    default_clock,
    now_seconds,
    options_map,
    ordered_body,
    unix_seconds,
)
from proxy.compat.openai_common import (
    STREAM_OPTIONS,
    TranslationError,
    base64_of,
    decode_image_url,
    go_base64_decode,
    native_message,
    native_tool_calls,
    openai_tool_calls,
    stop_option,
    usage,
)
from proxy.compat.openai_common import parse_body as parse_body
from proxy.compat.sse import DONE, JSON_HEADERS, STREAM_HEADERS, data_frame

PATH = "/v1/chat/completions"
NATIVE_PATH: NativePath = "/api/chat"
REASONING_EFFORTS = ("high", "medium", "low", "max", "none")

_FUNCTION = anonymous_struct({"name": ("Name", STRING), "arguments": ("Arguments", STRING)})
_TOOL_CALL = struct("openai.ToolCall", {"id": STRING, "index": INT, "type": STRING, "function": _FUNCTION})
MESSAGE = struct(
    "openai.Message",
    {
        "role": STRING,
        "content": ANY,
        "reasoning": STRING,
        "tool_calls": slice_of(_TOOL_CALL),
        "name": STRING,
        "tool_call_id": STRING,
    },
)
PARAMETERS = GoType("api.ToolFunctionParameters", "map")
TOOL = struct(
    "api.Tool",
    {
        "type": STRING,
        "items": ANY,
        "function": struct(
            "api.ToolFunction", {"name": STRING, "description": STRING, "parameters": PARAMETERS}
        ),
    },
)
REQUEST = struct(
    "openai.ChatCompletionRequest",
    {
        "model": STRING,
        "messages": slice_of(MESSAGE),
        "stream": BOOL,
        "stream_options": STREAM_OPTIONS,
        "max_tokens": INT,
        "seed": INT,
        "stop": ANY,
        "temperature": FLOAT64,
        "frequency_penalty": FLOAT64,
        "presence_penalty": FLOAT64,
        "top_p": FLOAT64,
        "response_format": struct(
            "openai.ResponseFormat",
            {"type": STRING, "json_schema": struct("openai.JsonSchema", {"schema": RAW})},
        ),
        "tools": slice_of(TOOL),
        "reasoning": struct("openai.Reasoning", {"effort": STRING}),
        "reasoning_effort": STRING,
        "logprobs": BOOL,
        "top_logprobs": INT,
        "_debug_render_only": BOOL,
    },
)


@dataclass(frozen=True)
class ChatReply:
    """What the chat reply translator needs besides the native answer."""

    completion_id: str
    """``chatcmpl-<n>``, n from Go's ``rand.Intn(999)``."""
    include_usage: bool
    """``stream_options.include_usage``: add the usage chunk before ``[DONE]``."""


model_of = model_reader("openai.ChatCompletionRequest")


def to_native(body: Any, *, ids: IdSource | None = None) -> NativeRequest[ChatReply] | CompatError:
    """The ``/api/chat`` request Ollama makes of this body, or its 400 error reply."""
    try:
        request = decode(body, REQUEST)
    except GoDecodeError as error:
        return openai_error(400, str(error))
    if not request.get("messages"):
        return openai_error(400, "[] is too short - 'messages'")
    try:
        messages = convert_messages(request["messages"])
        think = _think(request)
    except TranslationError as error:
        return openai_error(400, str(error))
    stream = bool(request.get("stream", False))
    fields: dict[str, Any] = {"model": request.get("model", ""), "messages": messages, "stream": stream}
    has_format, format_value = _format(request.get("response_format"))
    if has_format:
        fields["format"] = format_value
    if request.get("tools"):
        fields["tools"] = request["tools"]
    fields["options"] = _options(request)
    if think is not None:
        fields["think"] = think
    if request.get("_debug_render_only"):
        fields["_debug_render_only"] = True
    if request.get("logprobs"):
        fields["logprobs"] = True
    if request.get("top_logprobs"):
        fields["top_logprobs"] = request["top_logprobs"]
    source = ids or RandomIds()
    reply = ChatReply(
        completion_id=f"chatcmpl-{source.intn(999)}",
        include_usage=bool(request.get("stream_options", {}).get("include_usage", False)),
    )
    return NativeRequest(
        path=NATIVE_PATH,
        body=ordered_body(NATIVE_PATH, fields),
        reply=reply,
        stream=stream,
        model=fields["model"],
    )


def convert_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``FromChatRequest``'s message loop: one OpenAI message may become several native ones."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role", "")
        tool_call_id = message.get("tool_call_id", "")
        reasoning = message.get("reasoning", "")
        tool_name = ""
        if role.lower() == "tool":
            tool_name = message.get("name", "")
            if not tool_name and tool_call_id:
                tool_name = _name_from_tool_call_id(messages, tool_call_id)
        content = message.get("content")
        tool_calls = message.get("tool_calls")
        if isinstance(content, str):
            converted.append(
                native_chat_message(
                    role,
                    content,
                    thinking=reasoning,
                    tool_calls=native_tool_calls(tool_calls or []),
                    tool_name=tool_name,
                    tool_call_id=tool_call_id,
                )
            )
        elif isinstance(content, list):
            converted.extend(_content_parts(role, content))
            if converted and tool_calls:
                last = converted[-1]
                converted[-1] = native_chat_message(
                    last["role"],
                    last["content"],
                    thinking=reasoning,
                    images=last.get("images", []),
                    tool_calls=native_tool_calls(tool_calls),
                    tool_name=tool_name,
                    tool_call_id=tool_call_id,
                )
        else:
            if tool_calls is None:
                raise TranslationError(f"invalid message content type: {go_type_name(content)}")
            converted.append(
                native_chat_message(
                    role,
                    "",
                    thinking=reasoning,
                    tool_calls=native_tool_calls(tool_calls),
                    tool_call_id=tool_call_id,
                )
            )
    return converted


def native_chat_message(
    role: str,
    content: str,
    *,
    thinking: str = "",
    images: Sequence[str] = (),
    tool_calls: Sequence[Mapping[str, Any]] = (),
    tool_name: str = "",
    tool_call_id: str = "",
) -> dict[str, Any]:
    """An ``api.Message`` as Go encodes it (empty optional fields omitted)."""
    message: dict[str, Any] = {"role": role, "content": content}
    if thinking:
        message["thinking"] = thinking
    if images:
        message["images"] = list(images)
    if tool_calls:
        message["tool_calls"] = list(tool_calls)
    if tool_name:
        message["tool_name"] = tool_name
    if tool_call_id:
        message["tool_call_id"] = tool_call_id
    return message


def _content_parts(role: str, parts: Sequence[Any]) -> list[dict[str, Any]]:
    messages = []
    for part in parts:
        if not isinstance(part, dict):
            raise TranslationError("invalid message format")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise TranslationError("invalid message format")
            messages.append(native_chat_message(role, text))
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise TranslationError("invalid message format")
            messages.append(native_chat_message(role, "", images=[base64_of(decode_image_url(url))]))
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict):
                raise TranslationError("invalid input_audio format")
            data = audio.get("data")
            if not isinstance(data, str):
                raise TranslationError("invalid input_audio format: missing data")
            try:
                decoded = go_base64_decode(data)
            except TranslationError as error:
                raise TranslationError(f"invalid input_audio base64 data: {error}") from None
            messages.append(native_chat_message(role, "", images=[base64_of(decoded)]))
        else:
            raise TranslationError("invalid message format")
    return messages


def _name_from_tool_call_id(messages: Sequence[Mapping[str, Any]], tool_call_id: str) -> str:
    for message in reversed(messages):
        for call in message.get("tool_calls") or []:
            if call.get("id") == tool_call_id:
                name = call.get("function", {}).get("name", "")
                return name if isinstance(name, str) else ""
    return ""


def _options(request: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    has_stop, stop = stop_option(request.get("stop"), strict=False)
    if has_stop:
        options["stop"] = stop
    if "max_tokens" in request:
        options["num_predict"] = request["max_tokens"]
    options["temperature"] = request.get("temperature", 1.0)
    for name in ("seed", "frequency_penalty", "presence_penalty"):
        if name in request:
            options[name] = request[name]
    options["top_p"] = request.get("top_p", 1.0)
    return options_map(options)


def _format(response_format: Mapping[str, Any] | None) -> tuple[bool, Any]:
    if response_format is None:
        return False, None
    kind = response_format.get("type", "").strip().lower()
    if kind == "json_object":
        return True, "json"
    schema_holder = response_format.get("json_schema")
    if kind == "json_schema" and schema_holder is not None and "schema" in schema_holder:
        return True, schema_holder["schema"]
    return False, None


def _think(request: Mapping[str, Any]) -> str | bool | None:
    if "reasoning" in request:
        effort = request["reasoning"].get("effort", "")
    else:
        effort = request.get("reasoning_effort", "")
    if not effort:
        return None
    if effort not in REASONING_EFFORTS:
        raise TranslationError(
            f'invalid reasoning value: \'{effort}\' (must be "high", "medium", "low", "max", or "none")'
        )
    return False if effort == "none" else str(effort)


def response_headers(stream: bool) -> dict[str, str]:
    """The headers Ollama's reply carries (besides Date and Content-Length/Transfer-Encoding)."""
    return dict(STREAM_HEADERS if stream else JSON_HEADERS)


def error_from_native(status: int, body: bytes, request: NativeRequest[ChatReply]) -> CompatError:
    """A native error answer (status not 200) as this route sends it."""
    return openai_native_error(status, body)


def from_native(native: Mapping[str, Any], request: NativeRequest[ChatReply]) -> dict[str, Any]:
    """``ToChatCompletion``: a whole native ``/api/chat`` answer as an OpenAI chat completion."""
    message = native_message(native)
    tool_calls = openai_tool_calls(message.get("tool_calls"))
    reason = _string(native.get("done_reason"))
    if reason == "stop" and tool_calls:
        reason = "tool_calls"
    created = unix_seconds(native.get("created_at"))
    choice: dict[str, Any] = {"index": 0, "message": _openai_message(message, tool_calls)}
    choice["finish_reason"] = reason or None
    logprobs = native.get("logprobs")
    if logprobs:
        choice["logprobs"] = {"content": logprobs}
    completion: dict[str, Any] = {
        "id": request.reply.completion_id,
        "object": "chat.completion",
        "created": GO_ZERO_UNIX if created is None else created,
        "model": _string(native.get("model")),
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
        "usage": usage(native),
    }
    if native.get("_debug_info") is not None:
        completion["_debug_info"] = native["_debug_info"]
    return completion


def _openai_message(message: Mapping[str, Any], tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    converted: dict[str, Any] = {
        "role": _string(message.get("role")),
        "content": _string(message.get("content")),
    }
    if message.get("thinking"):
        converted["reasoning"] = message["thinking"]
    if tool_calls:
        converted["tool_calls"] = tool_calls
    return converted


class StreamTranslator:
    """``ChatWriter`` for a stream: each native line in, its SSE frames out at once."""

    def __init__(self, request: NativeRequest[ChatReply], *, clock: Clock = default_clock) -> None:
        self._reply = request.reply
        self._clock = clock
        self._created: int | None = None
        self._first_chunk_sent = False
        self._tool_call_sent = False
        self.native_error: str | None = None
        """The message of a native error line met mid-stream (Ollama loses it; logs need not)."""

    def feed(self, native: Mapping[str, Any]) -> list[bytes]:
        """The frames Ollama writes for one native NDJSON object."""
        if isinstance(native.get("error"), str):
            self.native_error = native["error"]
        if self._created is None:
            created = unix_seconds(native.get("created_at"))
            self._created = now_seconds(self._clock) if created is None else created
        message = native_message(native)
        content = _string(message.get("content"))
        thinking = _string(message.get("thinking"))
        raw_calls = message.get("tool_calls")
        logprobs = native.get("logprobs")
        done = native.get("done") is True
        frames: list[bytes] = []
        empty_trailer = (
            done
            and self._first_chunk_sent
            and not content
            and not thinking
            and not raw_calls
            and not logprobs
        )
        if not empty_trailer:
            for chunk in self._content_chunks(
                native, content, thinking, openai_tool_calls(raw_calls), logprobs
            ):
                if chunk["choices"][0]["delta"].get("tool_calls"):
                    self._tool_call_sent = True
                frames.append(data_frame(chunk))
            self._first_chunk_sent = True
        if done:
            frames.extend(self._closing_frames(native))
        return frames

    def close(self) -> list[bytes]:
        """Frames owed when the native stream ends: none; Ollama writes nothing more."""
        return []

    def _chunk(self, model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._reply.completion_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
        }

    def _content_chunks(
        self,
        native: Mapping[str, Any],
        content: str,
        thinking: str,
        tool_calls: list[dict[str, Any]],
        logprobs: Any,
    ) -> list[dict[str, Any]]:
        model = _string(native.get("model"))
        include_role = not self._first_chunk_sent

        def delta(*, with_content: bool, with_reasoning: bool, role: bool) -> dict[str, Any]:
            fields: dict[str, Any] = {}
            if role:
                fields["role"] = "assistant"
            if with_content:
                fields["content"] = content
            if with_reasoning and thinking:
                fields["reasoning"] = thinking
            if with_content and tool_calls:
                fields["tool_calls"] = tool_calls
            return fields

        def choice(fields: dict[str, Any], with_logprobs: bool) -> dict[str, Any]:
            entry: dict[str, Any] = {"index": 0, "delta": fields, "finish_reason": None}
            if with_logprobs and logprobs:
                entry["logprobs"] = {"content": logprobs}
            return entry

        if not (thinking and (content or tool_calls)):
            fields = delta(with_content=True, with_reasoning=True, role=include_role)
            return [self._chunk(model, [choice(fields, True)])]
        reasoning_only = delta(with_content=False, with_reasoning=True, role=include_role)
        content_only = delta(with_content=True, with_reasoning=False, role=False)
        return [
            self._chunk(model, [choice(reasoning_only, True)]),
            self._chunk(model, [choice(content_only, False)]),
        ]

    def _closing_frames(self, native: Mapping[str, Any]) -> list[bytes]:
        reason = _string(native.get("done_reason")) or "stop"
        if reason == "stop" and self._tool_call_sent:
            reason = "tool_calls"
        model = _string(native.get("model"))
        finish = self._chunk(model, [{"index": 0, "delta": {}, "finish_reason": reason}])
        frames = [data_frame(finish)]
        if self._reply.include_usage:
            frames.append(data_frame({**self._chunk(model, []), "usage": usage(native)}))
        frames.append(DONE)
        return frames


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""
