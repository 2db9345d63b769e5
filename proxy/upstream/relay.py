"""Byte-for-byte relaying between the client and Ollama, streaming in both directions.

Nothing is buffered: request bodies flow from the client's stream into the upstream request,
and every chunk Ollama writes is written to the client as it arrives (``iter_any``), so each
NDJSON line keeps its timing. Hop-by-hop headers are dropped as RFC 9110 §7.6.1 says.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.upstream.client import Upstream, UpstreamUnavailable

log = structlog.get_logger("ollama_governor.forward")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        hdrs.PROXY_AUTHENTICATE,
        hdrs.PROXY_AUTHORIZATION,
        hdrs.TE,
        hdrs.TRAILER,
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        "Proxy-Connection",
    )
)
NDJSON = "application/x-ndjson"


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """The headers without hop-by-hop ones, including those the Connection header names."""
    named = {
        token.strip().lower() for value in headers.getall(hdrs.CONNECTION, ()) for token in value.split(",")
    }
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named
    )


def upstream_request_headers(
    request: web.Request, *, body_length: int | None, drop: tuple[str, ...] = ()
) -> CIMultiDict[str]:
    """Headers for the upstream request: the client's end-to-end ones, with Host left to the
    client session (Ollama checks it against its bind address) and Content-Length fixed when
    the body was rewritten."""
    headers = end_to_end(request.headers)
    headers.popall(hdrs.HOST, None)
    for name in drop:
        headers.popall(name, None)
    if body_length is not None:
        headers[hdrs.CONTENT_LENGTH] = str(body_length)
    return headers


def error_response(status: int, message: str) -> web.Response:
    """An error in Ollama's own shape, so every client library understands it."""
    return web.json_response({"error": message}, status=status)


class Tap(Protocol):
    """Something that watches the response bytes without holding them up."""

    def feed(self, chunk: bytes) -> None:
        """Look at one chunk as it passes."""


@dataclass(slots=True)
class Relayed:
    """How a relay ended: the status sent, and when the first body byte reached the client."""

    response: web.StreamResponse
    status: int
    first_byte_at: float | None = None
    completed: bool = False
    error: str | None = None
    content_type: str = ""


async def relay(
    request: web.Request,
    upstream: Upstream,
    *,
    body: bytes | aiohttp.StreamReader | None,
    body_length: int | None = None,
    drop_headers: tuple[str, ...] = (),
    tap: Tap | None = None,
) -> Relayed:
    """Forward the request, stream the answer back, and report how it went.

    Before headers are sent an upstream failure becomes a 502 in Ollama's error shape; after,
    the stream can only be ended: NDJSON gets Ollama's own mid-stream error line, anything
    else is cut so the client sees a truncated transfer rather than a clean end.
    """
    headers = upstream_request_headers(request, body_length=body_length, drop=drop_headers)
    try:
        upstream_response = await upstream.send(request.method, request.raw_path, headers=headers, data=body)
    except UpstreamUnavailable as exc:
        log.warning("upstream_unavailable", path=request.path, error=str(exc))
        failed = error_response(502, str(exc))
        await failed.prepare(request)
        await failed.write_eof()
        return Relayed(failed, 502, error=str(exc))
    completed = False
    try:
        response = web.StreamResponse(
            status=upstream_response.status,
            reason=upstream_response.reason,
            headers=end_to_end(upstream_response.headers),
        )
        await response.prepare(request)
        relayed = Relayed(response, upstream_response.status, content_type=upstream_response.content_type)
        try:
            async for chunk in upstream_response.content.iter_any():
                if relayed.first_byte_at is None:
                    relayed.first_byte_at = time.perf_counter()
                if tap is not None:
                    tap.feed(chunk)
                await response.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            relayed.error = f"upstream closed the stream: {exc or type(exc).__name__}"
            log.warning("upstream_stream_error", path=request.path, error=relayed.error)
            await _end_broken_stream(request, response, relayed)
            return relayed
        await response.write_eof()
        completed = relayed.completed = True
        return relayed
    finally:
        if completed:
            upstream_response.release()
        else:
            # The client went away or the stream broke: close the connection so Ollama
            # notices at once and stops generating.
            upstream_response.close()


async def _end_broken_stream(request: web.Request, response: web.StreamResponse, relayed: Relayed) -> None:
    if relayed.content_type == NDJSON:
        line = json.dumps({"error": relayed.error}).encode() + b"\n"
        await response.write(line)
        await response.write_eof()
    elif request.transport is not None:
        request.transport.close()
