"""Read the recorded Ollama 0.33 exchanges in ``tests/data/ollama-0.33`` as plain data.

A recording is one or more exchanges: ``### POST /path`` with the request body, then either
a whole answer (status line, headers, ``Content-Length`` bytes of body) or a stream (``###
status``, ``### header`` lines and one Python string literal per line that arrived).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "ollama-0.33"


@dataclass(frozen=True)
class Exchange:
    """One recorded request and Ollama's answer."""

    method: str
    path: str
    request: Any
    status: int
    headers: dict[str, str]
    body: bytes = b""
    lines: tuple[str, ...] = ()
    """For a stream: every line as it arrived, without its newline."""
    request_headers: dict[str, str] = field(default_factory=dict)

    @property
    def stream_bytes(self) -> bytes:
        """The streamed body as one byte string (each recorded line ends with a newline)."""
        return "".join(line + "\n" for line in self.lines).encode("utf-8")

    @property
    def frames(self) -> list[bytes]:
        """The SSE frames of a stream, each ending in its blank line."""
        text = self.stream_bytes
        return [chunk + b"\n\n" for chunk in text.split(b"\n\n") if chunk]

    @property
    def ndjson(self) -> list[dict[str, Any]]:
        """The objects of a native NDJSON stream."""
        return [json.loads(line) for line in self.lines if line]


def load(name: str) -> list[Exchange]:
    """Every exchange in ``tests/data/ollama-0.33/<name>``."""
    text = (DATA / name).read_text(encoding="utf-8")
    blocks = text.split("\n### POST ")
    if len(blocks) == 1:
        blocks = text.split("\n### GET ")
    return [_exchange(block) for block in blocks[1:]]


def load_one(name: str) -> Exchange:
    """The only exchange in a recording."""
    (exchange,) = load(name)
    return exchange


def _exchange(block: str) -> Exchange:
    head, _, rest = block.partition("\n")
    path = head.split()[0]
    request: Any = None
    request_headers: dict[str, str] = {}
    lines = rest.split("\n")
    index = 0
    while lines[index].startswith("### request"):
        line = lines[index]
        if line.startswith("### request body: "):
            request = json.loads(line.removeprefix("### request body: "))
        elif line.startswith("### request headers: "):
            request_headers = json.loads(line.removeprefix("### request headers: "))
        index += 1
    if lines[index].startswith("### status "):
        return _stream(path, request, request_headers, lines[index:])
    return _whole(path, request, request_headers, "\n".join(lines[index:]))


def _stream(path: str, request: Any, request_headers: dict[str, str], lines: list[str]) -> Exchange:
    status = int(lines[0].split()[2])
    headers: dict[str, str] = {}
    arrived: list[str] = []
    for line in lines[1:]:
        if line.startswith("### header "):
            name, _, value = line.removeprefix("### header ").partition(": ")
            headers[name] = value
        elif line.startswith("+"):
            literal = line.split("ms", 1)[1].strip()
            arrived.append(ast.literal_eval(literal))
    return Exchange(
        "POST", path, request, status, headers, lines=tuple(arrived), request_headers=request_headers
    )


def _whole(path: str, request: Any, request_headers: dict[str, str], text: str) -> Exchange:
    head, _, body_and_rest = text.partition("\n\n")
    status_line, *header_lines = head.split("\n")
    status = int(status_line.split()[1])
    headers = dict(line.split(": ", 1) for line in header_lines)
    length = int(headers["Content-Length"])
    body = body_and_rest.encode("utf-8")[:length]
    return Exchange("POST", path, request, status, headers, body=body, request_headers=request_headers)
