"""``/v1/completions`` to ``/api/generate`` and back, as Ollama's ``CompletionsMiddleware`` does.

Request: ``openai.FromCompleteRequest`` (``prompt`` must be a string; penalties are always
sent, ``top_p`` 0 means 1). Reply: ``openai.ToCompletion``; for a stream ``CompleteWriter``:
one chunk per native line stamped with the time it is written (not pinned, unlike chat), a
zero ``usage`` in every chunk when ``include_usage`` is on, the real usage in an extra chunk,
then ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.compat.errors import CompatError, openai_error, openai_native_error
from proxy.compat.godecode import ANY, BOOL, FLOAT32, INT, STRING, GoDecodeError, decode, model_reader, struct
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
from proxy.compat.openai_common import STREAM_OPTIONS, TranslationError, stop_option, usage
from proxy.compat.openai_common import parse_body as parse_body
from proxy.compat.sse import DONE, JSON_HEADERS, STREAM_HEADERS, data_frame

PATH = "/v1/completions"
NATIVE_PATH: NativePath = "/api/generate"

REQUEST = struct(
    "openai.CompletionRequest",
    {
        "model": STRING,
        "prompt": STRING,
        "frequency_penalty": FLOAT32,
        "max_tokens": INT,
        "presence_penalty": FLOAT32,
        "seed": INT,
        "stop": ANY,
        "stream": BOOL,
        "stream_options": STREAM_OPTIONS,
        "temperature": FLOAT32,
        "top_p": FLOAT32,
        "suffix": STRING,
        "logprobs": INT,
        "_debug_render_only": BOOL,
    },
)

_ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@dataclass(frozen=True)
class CompletionReply:
    """What the completions reply translator needs besides the native answer."""

    completion_id: str
    """``cmpl-<n>``, n from Go's ``rand.Intn(999)``."""
    include_usage: bool
    """``stream_options.include_usage``."""


model_of = model_reader("openai.CompletionRequest")


def to_native(body: Any, *, ids: IdSource | None = None) -> NativeRequest[CompletionReply] | CompatError:
    """The ``/api/generate`` request Ollama makes of this body, or its 400 error reply."""
    try:
        request = decode(body, REQUEST)
        options = _options(request)
    except GoDecodeError as error:
        return openai_error(400, str(error))
    except TranslationError as error:
        return openai_error(400, str(error))
    stream = bool(request.get("stream", False))
    fields: dict[str, Any] = {
        "model": request.get("model", ""),
        "prompt": request.get("prompt", ""),
        "suffix": request.get("suffix", ""),
        "system": "",
        "template": "",
        "stream": stream,
        "options": options,
    }
    if request.get("_debug_render_only"):
        fields["_debug_render_only"] = True
    top_logprobs = request.get("logprobs", 0)
    if top_logprobs > 0:
        fields["logprobs"] = True
        fields["top_logprobs"] = top_logprobs
    source = ids or RandomIds()
    reply = CompletionReply(
        completion_id=f"cmpl-{source.intn(999)}",
        include_usage=bool(request.get("stream_options", {}).get("include_usage", False)),
    )
    return NativeRequest(
        path=NATIVE_PATH,
        body=ordered_body(NATIVE_PATH, fields),
        reply=reply,
        stream=stream,
        model=fields["model"],
    )


def _options(request: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    has_stop, stop = stop_option(request.get("stop"), strict=True)
    if has_stop:
        options["stop"] = stop
    if "max_tokens" in request:
        options["num_predict"] = request["max_tokens"]
    options["temperature"] = request.get("temperature", 1.0)
    if "seed" in request:
        options["seed"] = request["seed"]
    options["frequency_penalty"] = request.get("frequency_penalty", 0.0)
    options["presence_penalty"] = request.get("presence_penalty", 0.0)
    top_p = request.get("top_p", 0.0)
    options["top_p"] = top_p if top_p != 0.0 else 1.0
    return options_map(options)


def response_headers(stream: bool) -> dict[str, str]:
    """The headers Ollama's reply carries (besides Date and Content-Length/Transfer-Encoding)."""
    return dict(STREAM_HEADERS if stream else JSON_HEADERS)


def error_from_native(status: int, body: bytes, request: NativeRequest[CompletionReply]) -> CompatError:
    """A native error answer (status not 200) as this route sends it."""
    return openai_native_error(status, body)


def _choice(native: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "text": _string(native.get("response")),
        "index": 0,
        "finish_reason": _string(native.get("done_reason")) or None,
    }


def from_native(native: Mapping[str, Any], request: NativeRequest[CompletionReply]) -> dict[str, Any]:
    """``ToCompletion``: a whole native ``/api/generate`` answer as an OpenAI completion."""
    created = unix_seconds(native.get("created_at"))
    return {
        "id": request.reply.completion_id,
        "object": "text_completion",
        "created": GO_ZERO_UNIX if created is None else created,
        "model": _string(native.get("model")),
        "system_fingerprint": "fp_ollama",
        "choices": [_choice(native)],
        "usage": usage(native),
    }


class StreamTranslator:
    """``CompleteWriter`` for a stream: each native line in, its SSE frames out at once."""

    def __init__(self, request: NativeRequest[CompletionReply], *, clock: Clock = default_clock) -> None:
        self._reply = request.reply
        self._clock = clock
        self.native_error: str | None = None
        """The message of a native error line met mid-stream (Ollama loses it; logs need not)."""

    def feed(self, native: Mapping[str, Any]) -> list[bytes]:
        """The frames Ollama writes for one native NDJSON object."""
        if isinstance(native.get("error"), str):
            self.native_error = native["error"]
        chunk: dict[str, Any] = {
            "id": self._reply.completion_id,
            "object": "text_completion",
            "created": now_seconds(self._clock),
            "choices": [_choice(native)],
            "model": _string(native.get("model")),
            "system_fingerprint": "fp_ollama",
        }
        if self._reply.include_usage:
            chunk["usage"] = dict(_ZERO_USAGE)
        frames = [data_frame(chunk)]
        if native.get("done") is True:
            if self._reply.include_usage:
                frames.append(data_frame({**chunk, "choices": [], "usage": usage(native)}))
            frames.append(DONE)
        return frames

    def close(self) -> list[bytes]:
        """Frames owed when the native stream ends: none; Ollama writes nothing more."""
        return []


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""
