"""Just enough HTTP/1.1 for the fake upstream and the load generator, in plain asyncio.

Why not aiohttp here: on a 2-core machine every microsecond the instruments spend is taken from
the proxy being measured. aiohttp's client and server cost 60-150 µs per request in Python; this
framing costs a few. It handles what the proxies under test send and answer (Content-Length,
chunked, keep-alive, close-delimited bodies) and nothing more.
"""

from __future__ import annotations

from collections.abc import Callable

Sink = Callable[[bytes], None]
"""Receives each piece of a decoded body, in order."""

_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """The start line and the headers (lower-cased names; repeated ones joined by ", ")."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return lines[0], headers


class BodyDecoder:
    """Decodes one message body (Content-Length, chunked, or until the connection closes)."""

    __slots__ = ("_state", "chunked", "done", "remaining", "sink")

    def __init__(self, sink: Sink, *, length: int | None, chunked: bool) -> None:
        self.sink = sink
        self.chunked = chunked
        self.remaining = -1 if length is None and not chunked else (length or 0)
        self._state = _SIZE
        self.done = not chunked and length == 0

    @classmethod
    def for_headers(cls, sink: Sink, headers: dict[str, str], *, request: bool) -> BodyDecoder:
        """The decoder a message with these headers needs (a request without a length has none)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return cls(sink, length=None, chunked=True)
        length = headers.get("content-length")
        if length is not None:
            return cls(sink, length=int(length), chunked=False)
        return cls(sink, length=0 if request else None, chunked=False)

    def feed(self, data: bytes, pos: int) -> int:
        """Consume what it can from ``data[pos:]``; returns where it stopped (``done`` says why)."""
        end = len(data)
        while pos < end and not self.done:
            if not self.chunked:
                if self.remaining < 0:  # close-delimited: everything belongs to the body
                    self.sink(data[pos:] if pos else data)
                    return end
                take = min(self.remaining, end - pos)
                self.sink(data if pos == 0 and take == end else data[pos : pos + take])
                pos += take
                self.remaining -= take
                self.done = self.remaining == 0
            elif self._state == _DATA:
                take = min(self.remaining, end - pos)
                self.sink(data[pos : pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._state = _DATA_END
            else:
                newline = data.find(b"\r\n", pos)
                if newline < 0:
                    return pos  # wait for the rest of the line
                line = data[pos:newline]
                pos = newline + 2
                if self._state == _SIZE:
                    self.remaining = int(line.split(b";", 1)[0], 16)
                    self._state = _DATA if self.remaining else _TRAILER
                elif self._state == _DATA_END:
                    self._state = _SIZE
                elif not line:  # the empty line after the last chunk (and any trailers)
                    self.done = True
        return pos

    def close(self) -> None:
        """The connection ended: a close-delimited body is complete now."""
        if self.remaining < 0 and not self.chunked:
            self.done = True


def chunk(payload: bytes) -> bytes:
    """One HTTP chunk, framed the way Ollama frames each NDJSON line."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


LAST_CHUNK = b"0\r\n\r\n"
