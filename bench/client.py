"""A lean keep-alive HTTP/1.1 client connection and the checks it applies to what comes back.

One ``Connection`` sends one request at a time and hands the decoded body to a sink. The sinks
verify as they go: ``Expect`` compares a whole body with the bytes it must be, ``StreamCheck``
compares every NDJSON line of a streamed chat with the line the fake upstream was asked to send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from bench import payloads
from bench.http1 import LAST_CHUNK, BodyDecoder, Sink, parse_head

USER_AGENT = "ollama-python/0.6.3 (x86_64 linux) Python/3.11.7"
"""What the official client sends; the proxies see a realistic set of headers."""


def request_head(
    method: str, path: str, host: str, *, body_length: int | None = None, chunked: bool = False
) -> bytes:
    """The request line and headers ollama-python (httpx) sends."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        "Accept: application/json",
        "Accept-Encoding: gzip, deflate",
        "Connection: keep-alive",
        f"User-Agent: {USER_AGENT}",
    ]
    if body_length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {body_length}"]
    if chunked:
        lines += ["Content-Type: application/octet-stream", "Transfer-Encoding: chunked"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post_json(path: str, host: str, body: bytes) -> bytes:
    """A whole POST request with a JSON body."""
    return request_head("POST", path, host, body_length=len(body)) + body


@dataclass(slots=True)
class Answer:
    """A response's status, and when its head and the end of its body arrived (ns)."""

    status: int = 0
    head_ns: int = 0
    end_ns: int = 0


class Connection(asyncio.Protocol):
    """One client connection; ``request`` returns once the whole body went to the sink."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answer: Answer | None = None
        self.decoder: BodyDecoder | None = None
        self.sink: Sink | None = None
        self.done: asyncio.Future[Answer] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.decoder is not None:
            self.decoder.close()
        if self.done is not None and not self.done.done():
            if self.decoder is not None and self.decoder.done and self.answer is not None:
                self.done.set_result(self.answer)
            else:
                self.done.set_exception(ConnectionError("the server closed the connection mid-answer"))
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(ConnectionError("the server closed the connection"))

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    async def request(self, head: bytes, sink: Sink, body: AsyncIterator[bytes] | None = None) -> Answer:
        """Send ``head`` (and a chunked ``body``), feed the answer's body to ``sink``."""
        if self.closed or self.transport is None:
            raise ConnectionError("the connection is closed")
        self.answer = Answer()
        self.sink = sink
        self.decoder = None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(head)
        if body is not None:
            async for piece in body:
                self.transport.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
                if self.drained is not None:
                    await self.drained
            self.transport.write(LAST_CHUNK)
        return await self.done

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        pos = 0
        if self.decoder is None:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            start_line, headers = parse_head(data[:end])
            assert self.answer is not None and self.sink is not None
            self.answer.status = int(start_line.split(" ", 2)[1])
            self.answer.head_ns = time.perf_counter_ns()
            self.decoder = BodyDecoder.for_headers(self.sink, headers, request=False)
            pos = end + 4
        pos = self.decoder.feed(data, pos)
        if self.decoder.done:
            assert self.answer is not None and self.done is not None
            self.answer.end_ns = time.perf_counter_ns()
            self.decoder = None
            self.done.set_result(self.answer)
        elif pos < len(data):
            self.buffer = data[pos:]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Collect:
    """Keeps a (small) body whole."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.parts.append(data)

    def value(self) -> bytes:
        return b"".join(self.parts)


class StreamCheck:
    """Checks a streamed chat line by line against what the fake was asked to send.

    A line is good only if it is byte-identical to the expected one, in order; the final
    ``done`` object must follow the last token line and nothing may follow it.
    """

    __slots__ = ("bad", "first_line_ns", "lines", "pieces", "seq", "stream_id", "tail")

    def __init__(self, stream_id: int, lines: int) -> None:
        self.stream_id = stream_id
        self.lines = lines
        self.seq = 0
        self.bad = 0
        self.pieces = 0
        """Body pieces received: about one per write of the sender (one per line from Ollama)."""
        self.tail = b""
        self.first_line_ns = 0

    def __call__(self, data: bytes) -> None:
        self.pieces += 1
        if self.tail:
            data = self.tail + data
        parts = data.split(b"\n")
        self.tail = parts.pop()
        if parts and not self.first_line_ns:
            self.first_line_ns = time.perf_counter_ns()
        for line in parts:
            if self.seq < self.lines:
                expected = payloads.stream_line(self.stream_id, self.seq)
            elif self.seq == self.lines:
                expected = payloads.final_line(self.lines)
            else:
                expected = b""  # nothing may follow the final object
            if line != expected:
                self.bad += 1
            self.seq += 1

    @property
    def complete(self) -> bool:
        """Every line arrived, the final object last, and nothing was left dangling."""
        return self.seq == self.lines + 1 and not self.tail

    @property
    def corrupted(self) -> bool:
        return self.bad > 0 or bool(self.tail)
