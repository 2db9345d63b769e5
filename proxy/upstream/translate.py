"""Relaying a translated ``/v1`` request: send the native body, answer in the route's own shape.

The governor sends an OpenAI- or Anthropic-style request to Ollama as the native call it becomes
(``proxy.compat``), so the answer comes back as native JSON or NDJSON and is translated here on
its way to the client: a native error becomes the route's error before any header is sent, a
whole answer is translated at once, and a stream goes line by line through the route's
``StreamTranslator``, each line's frames written as soon as the line arrived. Nothing waits for
more of the stream than one line.

The waits on Ollama, the drain's cut and the errors caught are those of the plain relay
(``open_upstream`` and ``Pieces`` in ``proxy.upstream.relay``): a failure before the answer is the
route's error with the relay's status (502, 504, 503), a stream that breaks is ended the way
Ollama's writer ends one whose native handler sent an error line.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import hdrs, web

from proxy.compat import (
    CompatError,
    CompatRoute,
    NativeRequest,
    StreamTranslator,
    encoder_line,
    is_thinking_unsupported,
)
from proxy.upstream.client import Upstream
from proxy.upstream.inflight import Flight, InFlight
from proxy.upstream.relay import (
    SSE,
    NoAnswer,
    Pieces,
    StreamBroken,
    error_ending,
    open_upstream,
    upstream_request_headers,
)

log = structlog.get_logger("ollama_governor.translate")

MAX_ERROR_BYTES = 1024 * 1024
"""A native error body longer than this is cut; Ollama's are a line of JSON."""
MAX_LINE_BYTES = 32 * 1024 * 1024
"""A native line longer than this (no newline in sight) ends the stream as broken."""

Resend = Callable[[NativeRequest[Any]], bytes]
"""The body to send for a changed native request (the decision applied to it again)."""


@dataclass(slots=True)
class Translated:
    """How a translated relay ended: the response sent, and what the native answer said."""

    response: web.StreamResponse
    status: int
    final: Mapping[str, Any] | None = None
    """The native final object (``done: true``, or the whole answer) for the record."""
    first_byte_at: float | None = None
    completed: bool = False
    error: str | None = None


def error_reply(error: CompatError) -> web.Response:
    """A route's error reply, status, headers and bytes as the translation made them."""
    return web.Response(status=error.status, body=error.body, headers=error.headers)


def native_error_body(message: str) -> bytes:
    """``{"error": message}``: what a native handler answers, for ``error_from_native``."""
    return json.dumps({"error": message}).encode()


async def relay_translated(
    request: web.Request,
    upstream: Upstream,
    route: CompatRoute,
    native: NativeRequest[Any],
    body: bytes,
    *,
    resend: Resend | None = None,
    inflight: InFlight | None = None,
) -> Translated:
    """Send ``body`` to ``native.path``, then answer the client in ``route``'s shape.

    ``resend`` is called once when Ollama refuses ``think`` for a request that Ollama's own
    middleware would have sent without it (``NativeRequest.relax_thinking``); its body is sent
    instead, so the client never sees that 400. ``inflight`` lets the drain cut this relay.
    """
    with _tracked(inflight) as flight:
        while True:
            sent = await _send(request, upstream, flight, route, native, body)
            if isinstance(sent, Translated):
                return sent
            try:
                if sent.status == 200 and native.stream and route.stream_translator is not None:
                    translator = route.stream_translator(native)
                    return await _stream(request, sent, flight, translator, route, native)
                if sent.status == 200:
                    return await _whole(request, sent, flight, route, native)
                error_body = await _read_capped(sent, flight, MAX_ERROR_BYTES)
                if error_body is None:
                    return await _failed(
                        request, route, native, _broken_status(flight), "upstream closed the stream"
                    )
                if (
                    resend is not None
                    and native.relax_thinking
                    and "think" in native.body
                    and is_thinking_unsupported(sent.status, error_body, native.model)
                ):
                    log.info("resent_without_think", model=native.model, path=request.path)
                    native = native.without_think()
                    body, resend = resend(native), None
                    continue
                reply = error_reply(route.error_from_native(sent.status, error_body, native))
                await reply.prepare(request)
                await reply.write_eof()
                return Translated(reply, sent.status, completed=True)
            finally:
                if sent.content.at_eof():
                    sent.release()
                else:
                    # The client went away or the stream broke: close the connection so Ollama
                    # notices at once and stops generating.
                    sent.close()


def _tracked(inflight: InFlight | None) -> Flight:
    return Flight(None) if inflight is None else inflight.track()


def _broken_status(flight: Flight) -> int:
    """The status recorded for an answer that broke off: 503 when the drain cut it."""
    return 503 if flight.cut_reason is not None else 502


async def _failed(
    request: web.Request, route: CompatRoute, native: NativeRequest[Any], status: int, message: str
) -> Translated:
    """Answer ``status`` in the route's error shape, before anything else was sent."""
    reply = error_reply(route.error_from_native(status, native_error_body(message), native))
    await reply.prepare(request)
    await reply.write_eof()
    return Translated(reply, status, error=message)


async def _send(
    request: web.Request,
    upstream: Upstream,
    flight: Flight,
    route: CompatRoute,
    native: NativeRequest[Any],
    body: bytes,
) -> aiohttp.ClientResponse | Translated:
    """The native request on its way, or the failure already answered in the route's shape."""
    # The body is the governor's own JSON: the client's encoding of its body does not apply.
    drop = (hdrs.ACCEPT_ENCODING, hdrs.CONTENT_ENCODING)
    headers = upstream_request_headers(request, body_length=len(body), drop=drop)
    headers[hdrs.CONTENT_TYPE] = "application/json"
    opened = await open_upstream(
        request, upstream, flight, method="POST", path_qs=native.path, headers=headers, body=body
    )
    if isinstance(opened, NoAnswer):
        return await _failed(request, route, native, opened.status, opened.message)
    return opened


async def _read_capped(response: aiohttp.ClientResponse, flight: Flight, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of the answer; None when it broke off first."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in Pieces(response, flight):
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except StreamBroken:
        return None
    return b"".join(chunks)[:limit]


async def _whole(
    request: web.Request,
    response: aiohttp.ClientResponse,
    flight: Flight,
    route: CompatRoute,
    native: NativeRequest[Any],
) -> Translated:
    """A whole native answer, translated at once (what Ollama's writer does with one write)."""
    first_byte_at = None
    chunks: list[bytes] = []
    try:
        async for chunk in Pieces(response, flight):
            first_byte_at = first_byte_at or time.perf_counter()
            chunks.append(chunk)
    except StreamBroken as broken:
        log.warning("upstream_stream_error", path=request.path, error=str(broken))
        return await _failed(request, route, native, _broken_status(flight), str(broken))
    answer = _object(b"".join(chunks))
    if answer is None:
        message = "upstream Ollama answered 200 with a body that is not a JSON object"
        log.warning("upstream_bad_answer", path=request.path)
        reply = error_reply(route.error_from_native(502, native_error_body(message), native))
        status = 502
    else:
        reply = web.Response(
            status=200,
            body=encoder_line(route.from_native(answer, native)),
            headers=route.response_headers(False),
        )
        status = 200
    await reply.prepare(request)
    await reply.write_eof()
    return Translated(reply, status, final=answer, first_byte_at=first_byte_at, completed=answer is not None)


async def _stream(
    request: web.Request,
    response: aiohttp.ClientResponse,
    flight: Flight,
    translator: StreamTranslator,
    route: CompatRoute,
    native: NativeRequest[Any],
) -> Translated:
    """Each native NDJSON line through the route's translator, its frames written at once."""
    reply = web.StreamResponse(status=200, headers=route.response_headers(True))
    await reply.prepare(request)
    relayed = Translated(reply, 200)
    lines = LineSplitter()
    try:
        async for chunk in Pieces(response, flight):
            relayed.first_byte_at = relayed.first_byte_at or time.perf_counter()
            frames = [frame for line in lines.feed(chunk) for frame in _feed(translator, line, relayed)]
            if frames:
                await reply.write(b"".join(frames))
    except (StreamBroken, aiohttp.ClientPayloadError) as broken:
        # ClientPayloadError: a line past MAX_LINE_BYTES, in the splitter's own words.
        relayed.error = (
            str(broken) if isinstance(broken, StreamBroken) else f"upstream closed the stream: {broken}"
        )
        if flight.cut_reason is not None:
            relayed.status = 503  # the drain cut it; a stream Ollama broke keeps its 200
        log.warning("upstream_stream_error", path=request.path, error=relayed.error)
        # What Ollama's writer does when its native handler ends a stream with an error line.
        frames = [*translator.feed({"error": relayed.error}), *translator.close()]
        if flight.cut_reason is not None:
            # Ollama's writer loses that line; a stream the governor cut says so in the route's
            # own error event, which the official SDKs raise.
            frames.append(error_ending(request.path, SSE, flight.cut_reason) or b"")
        with contextlib.suppress(ConnectionError):  # the client may have gone away as well
            await reply.write(b"".join(frames))
            await reply.write_eof()
        return relayed
    frames = [*_feed(translator, lines.rest(), relayed), *translator.close()]
    relayed.completed = True
    if frames:
        await reply.write(b"".join(frames))
    await reply.write_eof()
    if relayed.error is None:
        relayed.error = translator.native_error
    return relayed


class LineSplitter:
    """Complete NDJSON lines out of chunks, however the chunks cut them (no quadratic copies)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes, without their newlines."""
        if b"\n" not in chunk:
            self._pending += chunk
            if len(self._pending) > MAX_LINE_BYTES:
                raise aiohttp.ClientPayloadError(f"a native line is longer than {MAX_LINE_BYTES} bytes")
            return []
        head, *middle, tail = chunk.split(b"\n")
        first = bytes(self._pending) + head if self._pending else head
        self._pending = bytearray(tail)
        return [first, *middle]

    def rest(self) -> bytes:
        """What follows the last newline (a last line Ollama did not end with one)."""
        return bytes(self._pending)


def _feed(translator: StreamTranslator, line: bytes, relayed: Translated) -> list[bytes]:
    """The frames for one native line; the last ``done: true`` object is kept for the record."""
    native = _object(line) if line.strip() else None
    if native is None:
        return []
    if native.get("done") is True:
        relayed.final = native
    return translator.feed(native)


def _object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
