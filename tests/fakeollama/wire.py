"""Ollama's wire format: Go-style JSON, timestamps, durations, parameter lines and error bodies.

Why one module: every route of the fake encodes and parses the same way Go does (escaped HTML
characters, RFC 3339 nanosecond times, ``time.ParseDuration``), and the three error shapes
(native, OpenAI, Anthropic) are chosen in one place from the request path.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import secrets
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

MiB = 1 << 20
GiB = 1 << 30
FOREVER_NS = 2**63 - 1  # Go's math.MaxInt64 duration: expires_at ~292 years ahead
DEFAULT_KEEP_ALIVE_NS = 5 * 60 * 10**9
JSON_CT = "application/json; charset=utf-8"
"""gin's ``c.JSON``: every native route, and the compat middlewares' own validation errors."""
PLAIN_JSON_CT = "application/json"
"""What the OpenAI/Anthropic response writers set (their bodies end with a newline)."""
GO_MIN_INT64 = -(2**63)

_GO_UNITS_NS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "μs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_AT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([^\d.]+)")
_LITERALS = ("true", "false", "null")


def dumps(obj: Any) -> str:
    """Compact JSON escaped like Go's json.Marshal (<, >, & as \\u003c...), as Ollama sends it."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return (
        s.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def ts(ns: int) -> str:
    """RFC3339Nano in UTC with trailing zeros trimmed, like Go's time.Time JSON."""
    sec, frac = divmod(ns, 10**9)
    base = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber, which produces details.parameter_size ("268.10M", "8.0B")."""
    for div, suffix, dec in ((10**9, "B", 1), (10**6, "M", 2)):
        if n >= div:
            v = n / div
            return f"{v:.0f}{suffix}" if v == math.floor(v) else f"{v:.{dec}f}{suffix}"
    return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


def parse_go_duration(text: str) -> int:
    """Nanoseconds in a Go time.ParseDuration string; ValueError carries Go's message."""
    s, neg = text, False
    if s[:1] in ("+", "-"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"time: invalid duration {json.dumps(text)}")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if m is None:
            if re.fullmatch(r"[0-9.]+", s[pos:]):
                raise ValueError(f"time: missing unit in duration {json.dumps(text)}")
            bad = _GO_UNIT_AT.match(s, pos)
            if bad is not None:  # "5 minutes": the unit runs to the next digit
                raise ValueError(
                    f"time: unknown unit {json.dumps(bad.group(2))} in duration {json.dumps(text)}"
                )
            raise ValueError(f"time: invalid duration {json.dumps(text)}")
        total += float(m.group(1)) * _GO_UNITS_NS[m.group(2)]
        pos = m.end()
    return -int(total) if neg else int(total)


def go_int(v: float) -> int:
    """Go's int(float64) on amd64: truncation, and math.MinInt64 for anything out of range."""
    if not math.isfinite(v) or abs(v) >= 2**63:
        return GO_MIN_INT64
    return int(v)


def go_repr(v: Any) -> str:
    """Go's %#v for a Modelfile parameter value (strings quoted, floats without '.0')."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def param_lines(params: dict[str, list[Any]]) -> str:
    """Render parameters as /api/show does: "%-30s %#v", one line per (list) value."""
    return "\n".join(f"{k:<30} {go_repr(v)}" for k, vals in params.items() for v in vals)


def parse_params(text: str) -> dict[str, list[Any]]:
    """Parse /api/show-style parameter lines back into key -> values."""
    out: dict[str, list[Any]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, _, raw = line.strip().partition(" ")
        try:
            val: Any = json.loads(raw.strip())
        except ValueError:
            val = raw.strip()
        out.setdefault(key, []).append(val)
    return out


def full_name(name: str) -> str:
    """Name with tag, as /api/tags and /api/ps print it ("gemma3-270m:latest")."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def hex_id(prefix: str, n_bytes: int = 12) -> str:
    """Anthropic-style ids: ``msg_`` / ``req_`` + 24 hex digits (anthropic.generateID)."""
    return f"{prefix}_{secrets.token_hex(n_bytes)}"


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


GO_MAX_NESTING_DEPTH = 10_000
"""encoding/json's scanner: deeper nesting is a syntax error (``exceeded max depth``)."""


def _go_float(text: str) -> float:
    """A number decoded into ``any``: Go's ParseFloat fails on overflow (``1e400``)."""
    value = float(text)
    if math.isinf(value):
        raise ApiError(400, f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


def _nesting(text: str) -> tuple[int, str]:
    """The deepest nesting outside strings, and the bracket that first passed Go's limit."""
    depth = deepest = 0
    for match in re.finditer(r"[\[\]{}]", re.sub(r'"[^"\\]*(?:\\.[^"\\]*)*"', "", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > GO_MAX_NESTING_DEPTH:
            return depth, match.group()
        deepest = max(deepest, depth)
    return deepest, ""


def parse_json_body(raw: bytes) -> Any:
    """Decode a request body the way Go's encoding/json fails: ApiError(400, Go's message)."""
    if not raw.strip():
        raise ApiError(400, "missing request body")
    text = raw.decode(errors="replace")  # Go reads invalid UTF-8 in a string as U+FFFD
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_go_float, parse_int=_go_int)
        return _lone_surrogates_replaced(value) if re.search(r"\\u[dD][89a-fA-F]", text) else value
    except RecursionError:
        depth, bracket = _nesting(text)
        if bracket:
            raise ApiError(400, f"invalid character '{bracket}' exceeded max depth") from None
        with _deeper_recursion(depth):  # Go reads it; so must the fake
            return json.loads(text, parse_constant=_reject_constant, parse_float=_go_float, parse_int=_go_int)
    except ValueError as e:
        raise ApiError(400, _go_json_error(text, e)) from e


def _lone_surrogates_replaced(value: Any) -> Any:
    """Go decodes a lone surrogate escape (``"\\ud800"``) to U+FFFD; Python keeps it."""
    if isinstance(value, str):
        return re.sub("[\ud800-\udfff]", "\ufffd", value)
    if isinstance(value, dict):
        return {_lone_surrogates_replaced(k): _lone_surrogates_replaced(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lone_surrogates_replaced(item) for item in value]
    return value


def _go_int(text: str) -> float | int:
    """An integer literal decoded into ``any`` is a float64 in Go: one past its range fails too."""
    value = int(text)
    if abs(value) > 1.7976931348623157e308:
        raise ApiError(400, f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


@contextlib.contextmanager
def _deeper_recursion(depth: int) -> Iterator[None]:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * depth + 1000))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def go_type_name(value: Any) -> str:
    """Go's ``%T`` of a JSON value decoded into ``any`` (every number is a float64)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "float64"
    return "[]interface {}" if isinstance(value, list) else "map[string]interface {}"


SSE_ERROR_HEADERS = web.RequestKey("sse_error_headers", bool)
"""Set on a streamed /v1/messages or /v1/responses request: their middlewares set the event-stream
``Cache-Control`` and ``Connection`` headers before the handler runs, so its errors carry them."""

_JSON_KINDS: dict[type, str] = {
    str: "string",
    bool: "bool",
    int: "number",
    float: "number",
    list: "array",
    dict: "object",
}
_GO_ACCEPTS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
}


def check_go_fields(body: dict[str, Any], struct_name: str, fields: dict[str, str]) -> None:
    """encoding/json's first ``UnmarshalTypeError`` for the top-level fields of a Go struct:
    ``fields`` maps a json name to its Go type (``int``, ``float64``, ``[]openai.Message``)."""
    for key, value in body.items():
        go_type = fields.get(key)
        if go_type is None or value is None:
            continue
        base = "float" if go_type.startswith("float") else go_type
        struct = "." in go_type and not go_type.startswith("[]")  # e.g. openai.StreamOptions
        accepted = (
            (list,) if go_type.startswith("[]") else (dict,) if struct else _GO_ACCEPTS.get(base, (object,))
        )
        fits = isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)
        if base == "int" and isinstance(value, float):
            fits = False
        if not fits:
            kind = _JSON_KINDS.get(type(value), "value")
            if kind == "number" and base == "int":
                kind = f"number {value}"
            raise ApiError(
                400,
                f"json: cannot unmarshal {kind} into Go struct field {struct_name}.{key} of type {go_type}",
                from_writer=False,
            )


def _go_json_error(text: str, err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        pos = err.pos
        if pos >= len(text.rstrip()):
            return "unexpected EOF"
        ch = text[pos]
        for lit in _LITERALS:  # Go reads a literal letter by letter: 'not' -> 'o' in literal null
            if ch == lit[0]:
                for i, want in enumerate(lit[1:], 1):
                    if pos + i >= len(text):
                        return "unexpected EOF"
                    if text[pos + i] != want:
                        return f"invalid character '{text[pos + i]}' in literal {lit} (expecting '{want}')"
        return f"invalid character '{ch}' looking for beginning of value"
    # NaN / Infinity: Python's constants, which Go rejects at their first letter
    m = re.search(r"-?(NaN|Infinity)", text)
    if m is not None and m.group(0).startswith("-"):
        return "invalid character 'I' in numeric literal"
    return f"invalid character '{(m.group(1) if m else 'N')[0]}' looking for beginning of value"


class ApiError(Exception):
    """Raised by handlers; the middleware renders it in the error shape of the route.

    ``from_writer`` tells which layer of Ollama produced a compat-route error: the response
    writer (``application/json``, body ending in a newline) or gin's ``AbortWithStatusJSON`` in
    the middleware's own validation (``application/json; charset=utf-8``, no newline).
    """

    def __init__(self, status: int, message: str, *, from_writer: bool = True) -> None:
        super().__init__(message)
        self.status, self.message, self.from_writer = status, message, from_writer


def json_response(
    obj: Any, status: int = 200, content_type: str = JSON_CT, *, newline: bool = False
) -> web.Response:
    """A JSON body with Content-Length, encoded the way Go's encoding/json does."""
    body = dumps(obj) + ("\n" if newline else "")
    return web.Response(status=status, body=body.encode(), headers={"Content-Type": content_type})


_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_response(path: str, err: ApiError, *, modern: bool) -> web.Response:
    """Ollama's error body for ``path``: native, OpenAI or Anthropic shape (facts §1 Errors)."""
    if path.startswith("/v1/messages") and modern:
        body = {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(err.status, "api_error"), "message": err.message},
            "request_id": hex_id("req"),
        }
        return _compat_error(body, err)
    if path.startswith("/v1/"):
        body = {
            "error": {
                "message": err.message,
                "type": _OPENAI_TYPES.get(err.status, "api_error"),
                "param": None,
                "code": None,
            }
        }
        if not modern:
            return json_response(body, err.status, PLAIN_JSON_CT)
        return _compat_error(body, err)
    return json_response({"error": err.message}, err.status)


def _compat_error(body: dict[str, Any], err: ApiError) -> web.Response:
    if err.from_writer:
        return json_response(body, err.status, PLAIN_JSON_CT, newline=True)
    return json_response(body, err.status)


def version_tuple(version: str) -> tuple[int, int]:
    """(major, minor) of an Ollama version string such as "0.33.0-rc2"."""
    major, minor, *_ = [*(int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", version)[:2]), 0, 0]
    return major, minor
