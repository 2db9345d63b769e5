"""Find the final ``done: true`` object of an Ollama answer while it streams past.

Only the last complete line is remembered (plus the unfinished tail), so the tap costs one
``rfind`` per chunk and one JSON parse per request, and never delays or alters a byte.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_LINE_BYTES = 32 * 1024 * 1024
"""A final object bigger than this (a huge ``context`` array) is not parsed; metrics are lost,
the response is not."""


class FinalObjectTap:
    """Remembers the last JSON line of a streamed (NDJSON) or whole (JSON) response."""

    __slots__ = ("_last", "_pending", "overflowed")

    def __init__(self) -> None:
        self._last = b""
        self._pending = bytearray()
        self.overflowed = False

    def feed(self, chunk: bytes) -> None:
        """Look at one chunk of the response body."""
        end = chunk.rfind(b"\n")
        if end == -1:
            self._append(chunk)
            return
        while end != -1:
            start = chunk.rfind(b"\n", 0, end)
            if start == -1:
                line = bytes(self._pending) + chunk[:end] if self._pending else chunk[:end]
            else:
                line = chunk[start + 1 : end]
            if line.strip():
                self._last = line
                break
            end = start
        self._pending = bytearray()
        self.overflowed = False
        self._append(chunk[chunk.rfind(b"\n") + 1 :])

    def _append(self, data: bytes) -> None:
        if self.overflowed or not data:
            return
        if len(self._pending) + len(data) > MAX_LINE_BYTES:
            self.overflowed = True
            self._pending = bytearray()
            return
        self._pending += data

    def final_object(self) -> dict[str, Any] | None:
        """The last JSON object seen, or None when there is none (or it did not parse)."""
        candidate = bytes(self._pending) if self._pending.strip() else self._last
        if not candidate or self.overflowed:
            return None
        try:
            value = json.loads(candidate)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


_TAIL_FIGURE = re.compile(rb'"(total_duration|load_duration|prompt_eval_count)":(\d+)')
TAIL_BYTES = 4096


class TailFiguresTap:
    """Reads an embedding answer's figures from its last bytes, where Ollama writes them.

    ``/api/embed`` answers ``{"model", "embeddings": [...], "total_duration", "load_duration",
    "prompt_eval_count"}``: the vectors can be megabytes, the figures are the last few dozen
    bytes. Keeping only the tail costs no memory and no parse of the vectors.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        """Look at one chunk of the response body."""
        self._tail = (self._tail + chunk)[-TAIL_BYTES:]

    def final_object(self) -> dict[str, Any] | None:
        """The figures found in the tail, or None when there are none."""
        found = {key.decode(): int(value) for key, value in _TAIL_FIGURE.findall(self._tail)}
        return found or None
