"""Request bodies a client compressed (``Content-Encoding``), for the routes that translate them.

The native routes relay a compressed body as sent (Ollama, like Go's net/http, does not inflate a
request and answers it itself). The OpenAI- and Anthropic-style routes read the body to translate
it, so they inflate gzip and deflate here, never past the governed-body limit (a small body may
inflate to gigabytes).
"""

from __future__ import annotations

import zlib

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decoded(raw: bytes, content_encoding: str | None, limit: int) -> bytes | None:
    """``raw`` as sent before its ``Content-Encoding``; None when the encoding is not gzip or
    deflate, the bytes do not decode, or they inflate past ``limit`` bytes."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    wbits = _WBITS.get(encoding)
    if wbits is None:
        return None
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or inflater.unconsumed_tail or not inflater.eof:
        return None
    return out
