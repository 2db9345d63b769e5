"""The aiohttp handler of the governed endpoints: read the body, run the pipeline, relay, finish.

Everything HTTP about a governed request lives here and nothing else does: the body is parsed
(``proxy.request.parse``), decided by the pipeline (``proxy.govern.pipeline``), relayed
(``proxy.upstream.relay``), and the answer goes back into the pipeline to be recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import hdrs, web

from policies.context import Endpoint
from proxy.config.reader import duration_text
from proxy.config.settings import LimitsSettings
from proxy.govern.boundary import safe_await
from proxy.govern.pipeline import Pipeline
from proxy.govern.record import Answer
from proxy.request.parse import parse_request
from proxy.request.prompt import EMBED_ENDPOINTS
from proxy.upstream.client import Upstream
from proxy.upstream.inflight import InFlight
from proxy.upstream.relay import error_response, relay
from proxy.upstream.tap import FinalObjectTap, TailFiguresTap

log = structlog.get_logger("ollama_governor.request")

GOVERNED_PATHS: dict[str, Endpoint] = {
    "/api/generate": "generate",
    "/api/chat": "chat",
    "/api/embed": "embed",
    "/api/embeddings": "embeddings",
}


async def read_body(request: web.Request, limits: LimitsSettings) -> tuple[bytes, bool] | web.Response:
    """The body to govern, and whether it was read whole (False: larger than
    ``max_governed_body``, relay it as it comes); or the 408 for a body that stalls.

    A small body usually arrives with the request's head; then there is nothing to wait for and
    no timer is armed (the timer was most of what reading a small body cost)."""
    limit = limits.max_governed_body_bytes
    if request.content.is_eof():
        raw = request.content.read_nowait()
        return raw, len(raw) <= limit
    try:
        async with asyncio.timeout(limits.body_timeout_s or None):
            return await read_limited(request, limit)
    except TimeoutError:
        waited = duration_text(limits.body_timeout_s)
        response = error_response(408, f"the request body did not arrive within {waited}")
        response.force_close()
        return response


async def read_limited(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """The body, and whether it was read whole (False: it is larger than ``limit``)."""
    if request.content_length is not None and request.content_length > limit:
        return b"", False
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), False
    return b"".join(chunks), True


async def prefixed(prefix: bytes, rest: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body's bytes already read, then the rest as it arrives (for a body relayed ungoverned)."""
    if prefix:
        yield prefix
    async for chunk in rest.iter_any():
        yield chunk


class GovernedHandler:
    """Handles the governed native routes: ``/api/generate``, ``/api/chat``, ``/api/embed`` and
    ``/api/embeddings`` (embeddings load models too)."""

    def __init__(self, pipeline: Pipeline, upstream: Upstream, inflight: InFlight | None = None) -> None:
        self.pipeline = pipeline
        self.upstream = upstream
        self.inflight = inflight

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        """Govern one request and relay its answer."""
        started = time.perf_counter()
        endpoint = GOVERNED_PATHS[request.path]
        limits = self.pipeline.governor.config.limits
        read = await read_body(request, limits)
        if isinstance(read, web.Response):
            return read
        raw, whole = read
        if not whole:
            log.warning("not_governed", reason="body too large to govern", path=request.path)
            body = prefixed(raw, request.content)
            relayed = await relay(
                request,
                self.upstream,
                body=body,
                inflight=self.inflight,
                body_timeout_s=limits.body_timeout_s,
            )
            return relayed.response
        parsing = time.perf_counter()
        parsed = parse_request(endpoint, raw)
        if self.pipeline.steps is not None:
            self.pipeline.steps.since("parse body", parsing)  # a large body is parsed on the loop
        if parsed is None:
            return (await relay(request, self.upstream, body=raw, inflight=self.inflight)).response
        # Governing fails open: if deciding breaks (a bug of ours), the request goes as sent.
        decided = await safe_await(
            "decide",
            self.pipeline.decide(parsed, client=request.remote, headers=request.headers),
            model=parsed.model,
        )
        if decided is None:
            return (await relay(request, self.upstream, body=raw, inflight=self.inflight)).response
        if decided.rejection is not None:
            self.pipeline.refuse(decided)
            return error_response(400, decided.rejection)
        sent = raw if decided.body is None else decided.body
        decided = decided.for_relay(len(raw))
        del raw, parsed  # one copy of the body, the bytes sent, is kept while the answer streams
        tap = TailFiguresTap() if endpoint in EMBED_ENDPOINTS else FinalObjectTap()
        with self.pipeline.answering(decided):
            relayed = await relay(
                request,
                self.upstream,
                body=sent,
                body_length=None if decided.body is None else len(decided.body),
                drop_headers=(hdrs.ACCEPT_ENCODING,),
                tap=tap,
                inflight=self.inflight,
            )
        ttfb_ms = round((relayed.first_byte_at - started) * 1000, 3) if relayed.first_byte_at else None
        answer = Answer.of(
            relayed.status,
            tap.final_object(),
            completed=relayed.completed,
            error=relayed.error,
            ttfb_ms=ttfb_ms,
        )
        self.pipeline.finish_soon(decided, answer)
        return relayed.response
