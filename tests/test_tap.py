"""The tap finds Ollama's final object however the bytes are cut into chunks."""

from __future__ import annotations

import json

import pytest

from proxy.upstream.tap import FinalObjectTap

LINES = [
    {"model": "m", "response": "a", "done": False},
    {"model": "m", "response": "b", "done": False},
    {"model": "m", "response": "", "done": True, "done_reason": "stop", "eval_count": 2},
]
STREAM = b"".join(json.dumps(line).encode() + b"\n" for line in LINES)


def feed_in(chunks: list[bytes]) -> FinalObjectTap:
    tap = FinalObjectTap()
    for chunk in chunks:
        tap.feed(chunk)
    return tap


class TestFinalObjectTap:
    def test_one_line_per_chunk(self) -> None:
        """Ollama's usual framing: each NDJSON line is its own chunk."""
        chunks = [json.dumps(line).encode() + b"\n" for line in LINES]
        assert feed_in(chunks).final_object() == LINES[-1]

    @pytest.mark.parametrize("size", [1, 3, 7, 50, 10_000])
    def test_any_split(self, size: int) -> None:
        """Lines split across chunks at any point are reassembled."""
        chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
        assert feed_in(chunks).final_object() == LINES[-1]

    def test_whole_json_without_newline(self) -> None:
        """A non-streamed answer is one object, often without a trailing newline."""
        assert feed_in([b'{"done":true,', b'"eval_count":3}']).final_object() == {
            "done": True,
            "eval_count": 3,
        }

    def test_error_after_stream_started(self) -> None:
        """A mid-stream error line is the last object; the caller sees it is not done."""
        first_two = b"".join(json.dumps(line).encode() + b"\n" for line in LINES[:2])
        tap = feed_in([first_two[:50], first_two[50:], b'{"error":"boom"}\n'])
        assert tap.final_object() == {"error": "boom"}

    def test_garbage(self) -> None:
        """Bytes that are not JSON yield no object rather than an exception."""
        assert feed_in([b"404 page not found"]).final_object() is None
        assert feed_in([]).final_object() is None

    def test_trailing_blank_lines(self) -> None:
        """Blank lines after the last object do not hide it."""
        assert feed_in([STREAM + b"\n\n"]).final_object() == LINES[-1]
