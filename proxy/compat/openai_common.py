"""Pieces the OpenAI-style translators share: request struct shapes, images, tool calls, usage.

Each function mirrors one in Ollama's ``openai`` package and says which; an error message is
the one Ollama puts in its 400 reply.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.compat.errors import CompatError, openai_error
from proxy.compat.godecode import BOOL, go_type_name, struct
from proxy.compat.gojson import GoJSONError, TooDeep, dumps, loads
from proxy.compat.native import Unsupported

STREAM_OPTIONS = struct("openai.StreamOptions", {"include_usage": BOOL})

_IMAGE_TYPES = ("jpeg", "jpg", "png", "webp")
_BASE64_ALPHABET = {
    c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
}


def parse_body(raw: bytes) -> Any | CompatError | Unsupported:
    """The request body as gin reads it, or Ollama's 400 for a body that is not JSON (or one
    nested past Go's limit); ``Unsupported`` for one too deep to translate."""
    try:
        return loads(raw)
    except GoJSONError as error:
        return openai_error(400, str(error))
    except TooDeep as error:
        return Unsupported(str(error))


class TranslationError(ValueError):
    """A request Ollama refuses while converting it; ``str(error)`` is Ollama's message."""


def go_base64_decode(text: str) -> bytes:
    """``base64.StdEncoding.DecodeString``: padded, newlines skipped, Go's error positions."""
    source = text.encode("utf-8", "surrogatepass")
    out = bytearray()
    position = 0
    while position < len(source):
        position, chunk = _decode_quantum(source, position)
        out += chunk
    return bytes(out)


def _decode_quantum(source: bytes, position: int) -> tuple[int, bytes]:
    values: list[int] = []
    while len(values) < 4:
        if position == len(source):
            if not values:
                return position, b""
            raise TranslationError(f"illegal base64 data at input byte {position - len(values)}")
        byte = source[position]
        position += 1
        if byte in _BASE64_ALPHABET:
            values.append(_BASE64_ALPHABET[byte])
            continue
        if byte in b"\r\n":
            continue
        if byte != ord("="):
            raise TranslationError(f"illegal base64 data at input byte {position - 1}")
        if len(values) < 2:
            raise TranslationError(f"illegal base64 data at input byte {position - 1}")
        if len(values) == 2:
            position = _skip_newlines(source, position)
            if position == len(source):
                raise TranslationError(f"illegal base64 data at input byte {len(source)}")
            if source[position] != ord("="):
                raise TranslationError(f"illegal base64 data at input byte {position - 1}")
            position += 1
        position = _skip_newlines(source, position)
        if position < len(source):
            raise TranslationError(f"illegal base64 data at input byte {position}")
        break
    packed = 0
    for value in values:
        packed = packed << 6 | value
    packed <<= 6 * (4 - len(values))
    return position, packed.to_bytes(3, "big")[: len(values) - 1]


def _skip_newlines(source: bytes, position: int) -> int:
    while position < len(source) and source[position] in b"\r\n":
        position += 1
    return position


def base64_of(data: bytes) -> str:
    """How Go marshals ``api.ImageData`` (a ``[]byte``): standard padded base64."""
    return base64.b64encode(data).decode("ascii")


def decode_image_url(url: str) -> bytes:
    """``decodeImageURL``: a base64 data URI (jpeg, jpg, png, webp or no type) to bytes."""
    if url.startswith(("http://", "https://")):
        raise TranslationError(
            "image URLs are not currently supported, please use base64 encoded data instead"
        )
    if url.startswith("data:;base64,"):
        payload = url.removeprefix("data:;base64,")
    else:
        for image_type in _IMAGE_TYPES:
            prefix = f"data:image/{image_type};base64,"
            if url.startswith(prefix):
                payload = url.removeprefix(prefix)
                break
        else:
            raise TranslationError("invalid image input")
    try:
        return go_base64_decode(payload)
    except TranslationError:
        raise TranslationError("invalid image input") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def parse_arguments(arguments: str) -> dict[str, Any] | None:
    """``json.Unmarshal`` of a tool call's ``arguments`` string into Ollama's arguments map.

    Returns None for ``null`` and raises ValueError for anything that is not one JSON object.
    """
    value = json.loads(arguments, parse_constant=_reject_constant)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def native_tool_calls(tool_calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``FromCompletionToolCall``: OpenAI ``tool_calls`` to ``api.ToolCall`` JSON."""
    converted = []
    for call in tool_calls:
        function = call.get("function", {})
        try:
            arguments = parse_arguments(function.get("arguments", ""))
        except ValueError:
            raise TranslationError("invalid tool call arguments") from None
        native: dict[str, Any] = {}
        if call.get("id"):
            native["id"] = call["id"]
        native["function"] = {"name": function.get("name", ""), "arguments": arguments or {}}
        converted.append(native)
    return converted


def openai_tool_calls(tool_calls: Any) -> list[dict[str, Any]]:
    """``ToToolCalls``: native ``tool_calls`` to OpenAI's, arguments as a JSON string."""
    if not isinstance(tool_calls, list):
        return []
    converted = []
    for call in tool_calls:
        call = call if isinstance(call, dict) else {}
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        assert isinstance(function, dict)
        arguments = function.get("arguments")
        converted.append(
            {
                "id": _string(call.get("id")),
                "index": _int(function.get("index")),
                "type": "function",
                "function": {
                    "name": _string(function.get("name")),
                    "arguments": dumps(arguments if arguments is not None else {}).decode("utf-8"),
                },
            }
        )
    return converted


def usage(native: Mapping[str, Any]) -> dict[str, int]:
    """``ToUsage``: prompt and completion tokens from a native final object."""
    prompt = _int(native.get("prompt_eval_count"))
    completion = _int(native.get("eval_count"))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def native_message(native: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``message`` of a native chat object, or an empty one (Go's zero value)."""
    message = native.get("message")
    return message if isinstance(message, dict) else {}


def stop_option(stop: Any, strict: bool) -> tuple[bool, Any]:
    """``options["stop"]`` from OpenAI's ``stop``: (present, value).

    Chat drops non-string entries; completions (``strict``) refuses them with Ollama's
    ``invalid type for 'stop' field: %T``. An empty list becomes Go's nil slice, ``null``.
    """
    if isinstance(stop, str):
        return True, [stop]
    if isinstance(stop, list):
        stops = []
        for item in stop:
            if isinstance(item, str):
                stops.append(item)
            elif strict:
                raise TranslationError(f"invalid type for 'stop' field: {go_type_name(item)}")
        return True, stops or None
    return False, None


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
