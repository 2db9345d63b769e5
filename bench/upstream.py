"""A fast fake Ollama for the overhead runs: ``python -m bench.upstream [--port N]``.

It must never be the bottleneck, so it is a bare ``asyncio.Protocol`` on uvloop with canned
answers (a few µs per request) instead of an aiohttp app (~60 µs). It answers what clients and
the governor's fact gathering ask: ``GET /api/tags``, ``/api/ps``, ``/api/version``,
``POST /api/show``, ``/api/chat`` (whole or streamed) and ``/api/blobs/<digest>``.

Streams are framed as Ollama frames them (one HTTP chunk per NDJSON line) and written one line
per event-loop turn per stream, as fast as the loop turns, so lines reach the proxy as separate
writes the way tokens do, not as one pre-joined block; ``interval_ms`` in the request paces them
instead (used to keep 1000 streams open at once). Blob uploads are counted and CRC-checked on the
fly and answered ``201`` with ``{"bytes": n, "crc32": c}`` (Ollama sends an empty 201), so the
client can check that every byte arrived unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import resource
import sys
import zlib
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from bench import payloads
from bench.http1 import LAST_CHUNK, BodyDecoder, chunk, parse_head

JSON_TYPE = b"application/json; charset=utf-8"
NDJSON_TYPE = b"application/x-ndjson"
T = TypeVar("T")


class Clock:
    """The ``Date`` header, refreshed once a second rather than formatted per request."""

    def __init__(self) -> None:
        self.date = b""
        self.tick()

    def tick(self) -> None:
        self.date = email.utils.formatdate(usegmt=True).encode()
        asyncio.get_running_loop().call_later(1.0, self.tick)


def whole(status: bytes, content_type: bytes, body: bytes, date: bytes) -> bytes:
    """A complete response with a Content-Length, as Ollama sends JSON answers."""
    return b"HTTP/1.1 %b\r\nContent-Type: %b\r\nDate: %b\r\nContent-Length: %d\r\n\r\n%b" % (
        status,
        content_type,
        date,
        len(body),
        body,
    )


class BlobCounter:
    """Counts and CRCs an upload as it arrives: memory stays flat whatever the size."""

    __slots__ = ("crc", "size")

    def __init__(self) -> None:
        self.size = 0
        self.crc = 0

    def __call__(self, data: bytes) -> None:
        self.size += len(data)
        self.crc = zlib.crc32(data, self.crc)


class Stream:
    """Writes one streamed chat answer, a line per loop turn (or per ``interval_ms``)."""

    def __init__(self, conn: FakeOllama, stream_id: int, lines: int, interval_ms: float) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.lines = lines
        self.interval_s = interval_ms / 1000
        self.seq = 0
        self.loop = asyncio.get_running_loop()
        self.pending: asyncio.Handle | None = None

    def start(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nDate: %b\r\nTransfer-Encoding: chunked\r\n\r\n" % (
            NDJSON_TYPE,
            self.conn.clock.date,
        )
        self.conn.write(head)
        self.pump()

    def resume(self) -> None:
        """The socket drained: carry on unless a write is already scheduled."""
        if self.pending is None:
            self.pump()

    def pump(self) -> None:
        self.pending = None
        conn = self.conn
        if conn.closed or conn.paused:
            return  # resume_writing() calls resume() again
        if self.seq < self.lines:
            conn.write(chunk(payloads.stream_line(self.stream_id, self.seq) + b"\n"))
            self.seq += 1
            if self.interval_s:
                self.pending = self.loop.call_later(self.interval_s, self.pump)
            else:
                self.pending = self.loop.call_soon(self.pump)
            return
        conn.write(chunk(payloads.final_line(self.lines) + b"\n") + LAST_CHUNK)
        conn.finished()


class FakeOllama(asyncio.Protocol):
    """One client connection: parse requests in order, answer each from canned bytes."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.head: tuple[str, dict[str, str]] | None = None
        self.body: BodyDecoder | None = None
        self.body_parts: list[bytes] = []
        self.blob: BlobCounter | None = None
        self.stream: Stream | None = None
        self.keep_alive = True
        self.closed = False
        self.paused = False
        self.parsing = False

    # -- transport events ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.stream is not None:
            self.stream.resume()

    def data_received(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        self.parse()

    # -- requests --------------------------------------------------------------------------

    def parse(self) -> None:
        self.parsing = True
        data, pos = self.buffer, 0
        while pos < len(data) and self.stream is None and not self.closed:
            if self.head is None:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                self.head = parse_head(data[pos:end])
                pos = end + 4
                start_line, headers = self.head
                self.keep_alive = headers.get("connection", "").lower() != "close"
                self.blob = BlobCounter() if start_line.startswith("POST /api/blobs/") else None
                self.body_parts = []
                sink = self.blob if self.blob is not None else self.body_parts.append
                self.body = BodyDecoder.for_headers(sink, headers, request=True)
            assert self.body is not None
            pos = self.body.feed(data, pos)
            if not self.body.done:
                break  # the rest of the body is still on its way
            self.answer()
        self.buffer = data[pos:] if pos < len(data) else b""
        self.parsing = False

    def answer(self) -> None:
        assert self.head is not None
        start_line, _headers = self.head
        method, path = start_line.split(" ", 2)[:2]
        self.head = None
        date = self.clock.date
        if method == "POST" and path == "/api/chat":
            request = json.loads(b"".join(self.body_parts))
            if request.get("stream", True) is False:
                self.write(whole(b"200 OK", JSON_TYPE, payloads.CHAT_REPLY, date))
            else:
                stream_id, interval_ms = payloads.parse_stream_request(request["messages"][-1]["content"])
                lines = int((request.get("options") or {}).get("num_predict", 1))
                self.stream = Stream(self, stream_id, lines, interval_ms)
                self.stream.start()
                return
        elif method == "GET" and path == "/api/tags":
            self.write(whole(b"200 OK", JSON_TYPE, payloads.TAGS, date))
        elif method == "GET" and path == "/api/ps":
            self.write(whole(b"200 OK", JSON_TYPE, payloads.PS, date))
        elif method == "GET" and path == "/api/version":
            self.write(whole(b"200 OK", JSON_TYPE, payloads.VERSION, date))
        elif method == "POST" and path == "/api/show":
            self.write(whole(b"200 OK", JSON_TYPE, payloads.SHOW, date))
        elif method == "POST" and self.blob is not None:
            body = json.dumps({"bytes": self.blob.size, "crc32": self.blob.crc}).encode()
            self.write(whole(b"201 Created", JSON_TYPE, body, date))
        else:
            self.write(whole(b"404 Not Found", b"text/plain", b"404 page not found", date))
        self.finished()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def finished(self) -> None:
        """The answer is complete: close if asked, else read the next request."""
        self.stream = None
        self.body = None
        if not self.keep_alive and self.transport is not None:
            self.transport.close()
            return
        if self.buffer and not self.parsing:
            self.parse()  # a request that arrived while a stream was being written


async def serve(host: str, port: int) -> None:
    """Serve until killed; print ``ready <port>`` once listening."""
    clock = Clock()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeOllama(clock), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    await server.serve_forever()


def raise_fd_limit() -> None:
    """1000 open streams need more descriptors than a default soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed: the instruments should be as fast as they can be."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
