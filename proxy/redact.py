"""Describe an error without the bytes that caused it: no body, header value or query string.

aiohttp's parser errors quote the raw line they choke on (``Invalid header value char:
b'Authorization: Bearer ...'``), and client errors name the URL they failed on, query string
included. Anything that reaches a log or a client through the governor is described here
instead: the error's class and a fixed reason, never its message.
"""

from __future__ import annotations

import errno as errno_names
import ipaddress
import os
import re
import traceback

from aiohttp import http_exceptions

SAFE_REASON = re.compile(r"[A-Za-z][A-Za-z0-9 ,.\-]{0,100}")
"""The fixed text a parser error starts with; a quote, colon or backslash means data follows."""

HTTP_ERROR_REASONS: tuple[tuple[type[http_exceptions.HttpProcessingError], str], ...] = (
    (http_exceptions.BadHttpMethod, "a malformed request method"),
    (http_exceptions.BadStatusLine, "a malformed request line"),
    (http_exceptions.LineTooLong, "a line longer than the limit"),
    (http_exceptions.InvalidURLError, "a malformed request target"),
    (http_exceptions.InvalidHeader, "a malformed header"),
    (http_exceptions.TransferEncodingError, "malformed chunked encoding"),
    (http_exceptions.ContentLengthError, "a body shorter than its Content-Length"),
    (http_exceptions.ContentEncodingError, "a body that does not match its Content-Encoding"),
    (http_exceptions.HttpProcessingError, "a malformed HTTP message"),
)
"""Most specific first: the reason used when the parser's own text cannot be shown."""

TRACEBACK_FRAMES = 4


def http_error_reason(exc: http_exceptions.HttpProcessingError) -> str:
    """The parser's fixed reason (``Invalid header value char``), or one from the class.

    The C parser writes ``reason:\\n\\n  b'<the raw line>'``, the Python one ``reason: '<line>'``:
    only the leading fixed words are kept, line by line, up to the first sign of data.
    """
    heads: list[str] = []
    for line in str(exc.message).splitlines():
        head, colon, rest = line.strip().partition(":")
        head = head.replace("can't", "cannot").strip()
        if not head or not SAFE_REASON.fullmatch(head):
            break
        heads.append(head)
        if not colon or rest.strip():
            break
    if heads:
        return ": ".join(heads)
    return next(reason for cls, reason in HTTP_ERROR_REASONS if isinstance(exc, cls))


def describe_error(exc: BaseException) -> str:
    """``ClassName: fixed reason`` for any exception, built from its type and errno only.

    An ``OSError`` says its errno's own words (``Connection refused``); a parser error its fixed
    reason; anything else only its class, since a message may quote what it failed on.
    """
    name = type(exc).__name__
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return f"{name}: {http_error_reason(exc)}"
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(code, int) and code in errno_names.errorcode:
        return f"{name}: {os.strerror(code)}"
    return name


def describe_chain(exc: BaseException) -> str:
    """``describe_error`` of ``exc`` and of what caused it, when that says more."""
    described = describe_error(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and not isinstance(cause, type(exc)):
        inner = describe_error(cause)
        if inner != type(cause).__name__ or described == type(exc).__name__:
            return f"{described} ({inner})"
    return described


def frames(exc: BaseException, limit: int = TRACEBACK_FRAMES) -> list[str]:
    """Where ``exc`` was raised, as ``file:line in function``: enough to find a bug, no values."""
    summary = traceback.extract_tb(exc.__traceback__)[-limit:]
    return [f"{os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}" for frame in summary]


def client_address(value: object) -> str | None:
    """``value`` when it is an IP address (a client's, as aiohttp logs it), else None."""
    if not isinstance(value, str):
        return None
    try:
        ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    return value
