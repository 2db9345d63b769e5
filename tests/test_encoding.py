"""Compressed request bodies, inflated only for the translated routes and never past the limit."""

from __future__ import annotations

import gzip
import zlib

import pytest

from proxy.request.encoding import decoded

BODY = b'{"model": "gemma3-270m", "messages": []}'


@pytest.mark.parametrize(
    ("encoding", "raw"),
    [
        (None, BODY),
        ("identity", BODY),
        ("gzip", gzip.compress(BODY)),
        ("GZip ", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),
    ],
)
def test_what_decodes(encoding: str | None, raw: bytes) -> None:
    assert decoded(raw, encoding, 1 << 20) == BODY


@pytest.mark.parametrize(
    ("encoding", "raw"),
    [
        ("br", b"\x0b\x02\x80"),  # not read: Ollama answers it
        ("gzip", b"not gzip at all"),
        ("gzip", gzip.compress(BODY)[:-6]),  # cut short
        ("gzip, deflate", gzip.compress(BODY)),  # stacked encodings are not read
    ],
)
def test_what_does_not(encoding: str, raw: bytes) -> None:
    assert decoded(raw, encoding, 1 << 20) is None


def test_a_bomb_stops_at_the_limit() -> None:
    """64 MiB of zeros is 64 KiB gzipped; with a 1 MiB limit it is refused, not inflated."""
    bomb = gzip.compress(bytes(64 << 20))
    assert len(bomb) < 100_000
    assert decoded(bomb, "gzip", 1 << 20) is None
    assert decoded(gzip.compress(bytes(1 << 20)), "gzip", 1 << 20) == bytes(1 << 20)
