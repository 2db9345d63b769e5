"""Ollama's OpenAI- and Anthropic-style routes, translated to the native API and back.

Ollama answers ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/responses`` and ``/v1/messages`` by converting each request to ``/api/chat``,
``/api/generate`` or ``/api/embed`` and wrapping the response writer. Those bodies cannot carry
``num_ctx`` or ``keep_alive``; the native ones can. This package does Ollama's conversion in
the proxy, so the governor can set both on the native request and still hand the client the
bytes Ollama's compatibility layer would have written. Pure code: no I/O, no aiohttp.

Per request, with ``route = ROUTES[path]``::

    body = route.parse_body(raw)                 # or a CompatError to send as is
    native = route.to_native(body)               # NativeRequest | CompatError | Unsupported
    native = native.with_governance(num_ctx=8192, keep_alive="10m")
    # POST native.encode() to native.path; then, by the native status:
    #   not 200:        route.error_from_native(status, body_bytes, native)
    #   whole answer:   encoder_line(route.from_native(json_answer, native))
    #   stream:         t = route.stream_translator(native); write t.feed(line) per line

``/v1/models`` and ``/v1/models/{name}`` load nothing and are forwarded as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.compat import (
    anthropic_messages,
    anthropic_stream,
    openai_chat,
    openai_completions,
    openai_embeddings,
    openai_responses,
    openai_responses_stream,
)
from proxy.compat.errors import CompatError
from proxy.compat.gojson import encoder_line
from proxy.compat.native import (
    KEEP_ALIVE_FIELD,
    NUM_CTX_FIELD,
    NativePath,
    NativeRequest,
    Unsupported,
    is_thinking_unsupported,
)

__all__ = [
    "KEEP_ALIVE_FIELD",
    "NUM_CTX_FIELD",
    "ROUTES",
    "CompatError",
    "CompatRoute",
    "NativeRequest",
    "StreamTranslator",
    "Unsupported",
    "encoder_line",
    "is_thinking_unsupported",
]


class StreamTranslator(Protocol):
    """Turns native NDJSON objects into the route's SSE frames, one line at a time."""

    native_error: str | None

    def feed(self, native: Mapping[str, Any]) -> list[bytes]:
        """The frames for one native object, to write at once."""
        ...

    def close(self) -> list[bytes]:
        """Frames owed when the native stream ends."""
        ...


@dataclass(frozen=True)
class CompatRoute:
    """One compatibility route's translators, with Ollama's defaults for ids and clocks."""

    path: str
    native_path: NativePath
    parse_body: Callable[[bytes], Any]
    """Raw body to the parsed JSON value, a :class:`CompatError` (Go's decoder message), or
    :class:`Unsupported` for a body to send to Ollama as it is."""
    model_of: Callable[[Any], str | None]
    to_native: Callable[[Any], NativeRequest[Any] | CompatError | Unsupported]
    from_native: Callable[[Mapping[str, Any], NativeRequest[Any]], dict[str, Any]]
    stream_translator: Callable[[NativeRequest[Any]], StreamTranslator] | None
    """None for routes that never stream (embeddings)."""
    error_from_native: Callable[[int, bytes, NativeRequest[Any]], CompatError]
    response_headers: Callable[[bool], dict[str, str]]


ROUTES: dict[str, CompatRoute] = {
    openai_chat.PATH: CompatRoute(
        path=openai_chat.PATH,
        native_path="/api/chat",
        parse_body=openai_chat.parse_body,
        model_of=openai_chat.model_of,
        to_native=lambda body: openai_chat.to_native(body),
        from_native=openai_chat.from_native,
        stream_translator=lambda request: openai_chat.StreamTranslator(request),
        error_from_native=openai_chat.error_from_native,
        response_headers=openai_chat.response_headers,
    ),
    openai_completions.PATH: CompatRoute(
        path=openai_completions.PATH,
        native_path="/api/generate",
        parse_body=openai_completions.parse_body,
        model_of=openai_completions.model_of,
        to_native=lambda body: openai_completions.to_native(body),
        from_native=openai_completions.from_native,
        stream_translator=lambda request: openai_completions.StreamTranslator(request),
        error_from_native=openai_completions.error_from_native,
        response_headers=openai_completions.response_headers,
    ),
    openai_embeddings.PATH: CompatRoute(
        path=openai_embeddings.PATH,
        native_path="/api/embed",
        parse_body=openai_embeddings.parse_body,
        model_of=openai_embeddings.model_of,
        to_native=openai_embeddings.to_native,
        from_native=openai_embeddings.from_native,
        stream_translator=None,
        error_from_native=openai_embeddings.error_from_native,
        response_headers=openai_embeddings.response_headers,
    ),
    openai_responses.PATH: CompatRoute(
        path=openai_responses.PATH,
        native_path="/api/chat",
        parse_body=openai_responses.parse_body,
        model_of=openai_responses.model_of,
        to_native=lambda body: openai_responses.to_native(body),
        from_native=lambda native, request: openai_responses.from_native(native, request),
        stream_translator=lambda request: openai_responses_stream.StreamTranslator(request),
        error_from_native=openai_responses.error_from_native,
        response_headers=openai_responses.response_headers,
    ),
    anthropic_messages.PATH: CompatRoute(
        path=anthropic_messages.PATH,
        native_path="/api/chat",
        parse_body=lambda raw: anthropic_messages.parse_body(raw),
        model_of=anthropic_messages.model_of,
        to_native=lambda body: anthropic_messages.to_native(body),
        from_native=anthropic_messages.from_native,
        stream_translator=lambda request: anthropic_stream.StreamTranslator(request),
        error_from_native=lambda status, body, request: anthropic_messages.error_from_native(
            status, body, request
        ),
        response_headers=anthropic_messages.response_headers,
    ),
}
"""The translated routes by client path; any other ``/v1`` path is forwarded untouched."""
