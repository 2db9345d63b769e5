"""Byte-for-byte relaying between the client and Ollama, streaming in both directions.

Nothing is buffered: request bodies flow from the client's stream into the upstream request,
and every chunk Ollama writes is written to the client as it arrives (``readany``), so each
NDJSON line keeps its timing. Hop-by-hop headers are dropped as RFC 9110 §7.6.1 says.

Every wait on Ollama is bounded (``Upstream.first_byte_timeout_s`` for its answer to start,
``stream_idle_timeout_s`` between two pieces of it), except on the paths whose work has no
natural bound (pull, push, create, blob uploads). What the relay catches from Ollama is what
Ollama can cause: ``aiohttp.ClientError`` and timeouts; a bug of ours still raises.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config.reader import duration_text
from proxy.redact import describe_chain
from proxy.upstream.client import Upstream, UpstreamUnavailable
from proxy.upstream.inflight import Flight, InFlight

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
ANSWERED_HERE = frozenset({hdrs.EXPECT.lower()})
"""Request headers this hop has already acted on: aiohttp answered ``Expect: 100-continue``."""
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
UNBOUNDED_PATHS = frozenset({"/api/pull", "/api/push", "/api/create"})
UNBOUNDED_PREFIXES = ("/api/blobs/",)
"""Work with no natural bound (a 40 GB pull with ``stream: false`` answers when it is done)."""
BROKEN_STREAM = "upstream closed the stream"
BAD_BODY = "the request body was malformed or cut off"


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """The headers without hop-by-hop ones, including those the Connection header names.

    The names present are found in C (lower-cased and intersected), not header by header in
    Python: this ran twice a request and was a tenth of relaying a small answer."""
    kept = CIMultiDict(headers)
    present = HOP_BY_HOP.intersection(map(str.lower, headers.keys()))
    if "connection" in present:
        for value in headers.getall(hdrs.CONNECTION):
            for token in value.split(","):
                kept.popall(token.strip(), None)
    for name in present:
        kept.popall(name, None)
    return kept


def upstream_request_headers(
    request: web.Request, *, body_length: int | None, drop: tuple[str, ...] = ()
) -> CIMultiDict[str]:
    """Headers for the upstream request: the client's end-to-end ones, with Host left to the
    client session (Ollama checks it against its bind address) and Content-Length fixed when
    the body was rewritten."""
    headers = end_to_end(request.headers)
    headers.popall(hdrs.HOST, None)
    for name in (*drop, *ANSWERED_HERE):
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
    """How a relay ended: the status sent (503 for a stream the drain cut), and when the first
    body byte reached the client."""

    response: web.StreamResponse
    status: int
    first_byte_at: float | None = None
    completed: bool = False
    error: str | None = None
    content_type: str = ""


def is_bounded(path: str) -> bool:
    """Whether the upstream timeouts apply to ``path``."""
    return path not in UNBOUNDED_PATHS and not path.startswith(UNBOUNDED_PREFIXES)


class ClientBody:
    """The client's body as it streams into the upstream request, with a bound on each pause.

    It remembers why it stopped early, so a body that breaks or stalls is answered as the
    client's failure (400, 408), not as Ollama's (502).
    """

    __slots__ = ("failure", "idle_s", "stream")

    def __init__(self, stream: aiohttp.StreamReader | AsyncIterator[bytes], idle_s: float) -> None:
        self.stream = stream
        self.idle_s = idle_s or None
        self.failure: tuple[int, str] | None = None
        """The status and message to answer when the body stopped early."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self.stream.iter_any() if isinstance(self.stream, aiohttp.StreamReader) else self.stream
        iterator = aiter(chunks)
        while True:
            try:
                async with asyncio.timeout(self.idle_s):
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                self.failure = (
                    408,
                    f"the request body paused for more than {duration_text(self.idle_s or 0)}",
                )
                raise
            except (aiohttp.ClientError, web.RequestPayloadError, ConnectionError):
                self.failure = (400, BAD_BODY)
                raise
            yield chunk


async def relay(
    request: web.Request,
    upstream: Upstream,
    *,
    body: bytes | aiohttp.StreamReader | AsyncIterator[bytes] | None,
    body_length: int | None = None,
    drop_headers: tuple[str, ...] = (),
    tap: Tap | None = None,
    inflight: InFlight | None = None,
    body_timeout_s: float = 0.0,
) -> Relayed:
    """Forward the request, stream the answer back, and report how it went.

    Before headers are sent a failure becomes an error in Ollama's shape: 502 (unreachable),
    504 (no answer in time), 400 (the client's own body broke), 503 (shutting down). After,
    the stream can only be ended: NDJSON gets Ollama's mid-stream error line, SSE the route's
    error event, anything else is cut so the client sees a truncated transfer, not a clean end.
    A streamed body may pause for at most ``body_timeout_s`` (0: no bound) on bounded paths.
    """
    sent: bytes | ClientBody | None = (
        body
        if isinstance(body, bytes | None)
        else ClientBody(body, body_timeout_s if is_bounded(request.path) else 0.0)
    )
    # One function, streaming loop included: each piece resumes every coroutine it runs in.
    with Flight(None) if inflight is None else inflight.track() as flight:
        headers = upstream_request_headers(request, body_length=body_length, drop=drop_headers)
        opened = await open_upstream(
            request,
            upstream,
            flight,
            method=request.method,
            path_qs=request.raw_path,
            headers=headers,
            body=sent,
        )
        if isinstance(opened, NoAnswer):
            return await _refuse(request, opened.status, opened.message)
        upstream_response = opened
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
                async for chunk in Pieces(upstream_response, flight):
                    if relayed.first_byte_at is None:
                        relayed.first_byte_at = time.perf_counter()
                    if tap is not None:
                        tap.feed(chunk)
                    await response.write(chunk)
            except StreamBroken as broken:
                await _end_broken_stream(request, response, relayed, str(broken))
                if flight.cut_reason is not None:
                    relayed.status = 503
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


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """Why Ollama's answer never started: the status and message to answer the client with."""

    status: int
    message: str


async def open_upstream(
    request: web.Request,
    upstream: Upstream,
    flight: Flight,
    *,
    method: str,
    path_qs: str,
    headers: CIMultiDict[str],
    body: bytes | ClientBody | None,
) -> aiohttp.ClientResponse | NoAnswer:
    """Send the request and wait, within the first-byte timeout, for Ollama's answer to start.

    A failure is described, never raised: 502 (unreachable), 504 (too slow), 400 or 408 (the
    client's own body broke or stalled), 503 (the drain cut the wait). Both relays start here.
    """
    if flight.cut_reason is not None:
        return NoAnswer(503, flight.cut_reason)
    bounded = is_bounded(request.path)
    first_byte_s = upstream.first_byte_timeout_s if bounded else 0.0
    deadline = Deadline(first_byte_s, flight.task) if first_byte_s else None
    try:
        response = await upstream.send(method, path_qs, headers=headers, data=body)
    except UpstreamUnavailable as exc:
        if isinstance(body, ClientBody) and body.failure is not None:
            return NoAnswer(*body.failure)  # the client's body broke, not Ollama
        log.warning("upstream_unavailable", path=request.path, error=str(exc))
        return NoAnswer(502, str(exc))
    except asyncio.CancelledError:
        if flight.cut_reason is not None:
            _uncancel()
            return NoAnswer(503, flight.cut_reason)
        if deadline is None or not deadline.expired_here():
            raise
        error = f"upstream Ollama at {upstream.base_url} did not answer within {duration_text(first_byte_s)}"
        log.warning("upstream_timeout", path=request.path, error=error)
        return NoAnswer(504, error)
    finally:
        if deadline is not None:
            deadline.close()
    flight.upstream_response = response
    flight.idle_s = (upstream.stream_idle_timeout_s if bounded else 0.0) or None
    return response


class Deadline:
    """``asyncio.timeout`` for the one wait on Ollama's answer to start, at a third of its cost
    (it was a sixth of relaying a small answer): a timer that cancels the waiting task.

    The wait catches the ``CancelledError`` and asks ``expired_here()``: True when the timer
    fired and no other cancellation (the client went away) is pending, exactly as
    ``asyncio.timeout`` turns it into ``TimeoutError``.
    """

    __slots__ = ("_cancelling", "_handle", "_task", "expired")

    def __init__(self, delay_s: float, task: asyncio.Task[object] | None = None) -> None:
        """``task``: the one that waits (the relay's own, which its flight knows already)."""
        task = task or asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline needs a running task")
        self._task = task
        self._cancelling = task.cancelling()
        self.expired = False
        self._handle = asyncio.get_running_loop().call_later(delay_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def expired_here(self) -> bool:
        """Whether the cancellation being handled is this deadline's alone (it is then withdrawn)."""
        return self.expired and self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        self._handle.cancel()


def _uncancel() -> None:
    """Withdraw the cancellation the drain's cut asked for: it is answered with a 503."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


class StreamBroken(Exception):
    """Ollama's answer stopped before its end; ``str()`` is what the client and the log are told."""


TIMER_EARLY_S = 0.002
"""How early a loop may run a timer (its clock's resolution; uvloop's is a millisecond)."""


class IdleWatch:
    """The stream idle timeout with one timer per stream instead of one per read.

    ``asyncio.timeout`` around each read cost ~10 of the ~33 µs a relayed line takes. The reader
    (``Pieces``) only sets ``since`` when a read starts waiting and clears it when the piece is
    in; the timer, when it fires, re-arms at the deadline of the read in progress (or one idle
    period on, between reads), or closes Ollama's stream when that read has waited too long, which
    ends the read as the drain's cut does. The timer is the flight's (``Flight.timer``): it is
    cancelled when the relay ends, however it ends.
    """

    __slots__ = ("_flight", "_loop", "_response", "clock", "expired", "idle_s", "since")

    def __init__(self, response: aiohttp.ClientResponse, flight: Flight, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._response = response
        self._flight = flight
        self.idle_s = idle_s
        self.clock = self._loop.time
        """The loop's clock, which ``since`` is read on."""
        self.since: float | None = None
        """When the read in progress started waiting; None between reads (time spent writing a
        piece to the client does not count)."""
        self.expired = False
        flight.timer = self._loop.call_later(idle_s, self._check)

    def _check(self) -> None:
        now = self.clock()
        since = self.since
        if since is not None and now >= since + self.idle_s - TIMER_EARLY_S:
            self.expired = True
            self._response.close()
            return
        self._flight.timer = self._loop.call_at((now if since is None else since) + self.idle_s, self._check)


class Pieces:
    """Ollama's answer as it arrives (``async for chunk in Pieces(response, flight)``), each wait
    bounded by the flight's stream idle timeout.

    What Ollama can do to a stream (close it, break its framing, fall silent) and the drain's cut
    become ``StreamBroken``; anything else, a bug of ours included, is raised as it is. Until a
    read has to wait, pieces that have arrived already are taken as they are, and the idle timer
    starts at the first read that waits (a small answer arrives whole with its headers and never
    starts one); from then on each read is timed. A class, not an async generator: the loop's
    bookkeeping of each generator (a weak set entry and its finalizer) cost as much as the reads
    of a small answer.
    """

    __slots__ = ("_flight", "_response", "_watch")

    def __init__(self, response: aiohttp.ClientResponse, flight: Flight) -> None:
        self._response = response
        self._flight = flight
        self._watch: IdleWatch | None = None

    def __aiter__(self) -> Pieces:
        return self

    async def __anext__(self) -> bytes:
        content = self._response.content
        watch = self._watch
        try:
            if watch is None:  # no read has waited yet: take what has arrived
                chunk = content.read_nowait()
                if not chunk and not content.at_eof():
                    watch = self._watching()
                    if watch is None:  # no idle bound
                        chunk = await content.readany()
            if watch is not None:
                watch.since = watch.clock()
                chunk = await content.readany()
                watch.since = None
        except aiohttp.ClientError as exc:
            raise StreamBroken(_why_broken(exc, self._flight, self._watch)) from None
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def _watching(self) -> IdleWatch | None:
        """The idle timer, started by the first read that has to wait (None: no bound)."""
        if self._flight.idle_s:
            self._watch = IdleWatch(self._response, self._flight, self._flight.idle_s)
        return self._watch


def _why_broken(exc: BaseException, flight: Flight, watch: IdleWatch | None) -> str:
    """What the client and the log are told about a stream that ended early; no upstream bytes."""
    if flight.cut_reason is not None:
        return flight.cut_reason
    if watch is not None and watch.expired:
        return f"{BROKEN_STREAM}: no data for {duration_text(watch.idle_s)}"
    return f"{BROKEN_STREAM}: {describe_chain(exc)}"


async def _refuse(request: web.Request, status: int, message: str) -> Relayed:
    """Answer with an error in Ollama's shape before anything was relayed."""
    failed = error_response(status, message)
    if status in (400, 408, 503):
        failed.force_close()  # a broken body leaves the connection unusable; a stop closes it anyway
    await failed.prepare(request)
    await failed.write_eof()
    return Relayed(failed, status, error=message)


async def _end_broken_stream(
    request: web.Request, response: web.StreamResponse, relayed: Relayed, error: str
) -> None:
    """End a stream whose upstream broke off, in the route's own error framing."""
    relayed.error = error
    log.warning("upstream_stream_error", path=request.path, error=error)
    ending = error_ending(request.path, relayed.content_type, error)
    if ending is None:
        if request.transport is not None:
            request.transport.close()
        return
    try:
        await response.write(ending)
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away as well; nothing left to tell it


def error_ending(path: str, content_type: str, error: str) -> bytes | None:
    """The last bytes of a stream that broke: Ollama's error line for NDJSON, an error event for
    SSE (Anthropic's ``event: error`` on ``/v1/messages``, OpenAI's ``data: {"error": ...}``
    elsewhere, which both official SDKs raise as an API error), None for anything else."""
    if content_type == NDJSON:
        return json.dumps({"error": error}).encode() + b"\n"
    if content_type != SSE:
        return None
    if path.startswith("/v1/messages"):
        payload = {"type": "error", "error": {"type": "api_error", "message": error}}
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    inner = {"message": error, "type": "api_error", "param": None, "code": None}
    return b"data: " + json.dumps({"error": inner}).encode() + b"\n\n"
