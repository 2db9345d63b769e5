"""JSON as Go's ``encoding/json`` writes and reads it, so translated bodies match Ollama's bytes.

Ollama builds every compatibility reply with ``json.Marshal`` or ``json.NewEncoder``: compact
output, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, floats in the shortest form without a
trailing ``.0`` and in exponent form only below 1e-6 or from 1e21 up. Keys come out in insertion
order here; builders put them in Go's struct order, or sorted where Go marshals a map
(:func:`go_map_deep`). Reading follows ``json.Decoder.Decode`` as gin calls it: one value is read and
anything after it ignored, and failures carry Go's error text.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

_HTML_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_SURROGATES = re.compile("[\ud800-\udfff]")
_GO_WHITESPACE = " \t\n\r"


class GoJSONError(ValueError):
    """A body Go's decoder would refuse; ``str(error)`` is Go's own message."""


@dataclass(frozen=True)
class Verbatim:
    """A value Go holds as ``json.RawMessage``: written in its own key order, never sorted."""

    value: Any


def dumps(value: Any) -> bytes:
    """``json.Marshal(value)``: compact, HTML-safe, keys in the order the dicts hold them."""
    parts: list[str] = []
    _encode(value, parts)
    text = "".join(parts).translate(_HTML_ESCAPES)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Go decodes a lone surrogate escape to U+FFFD, so it can never write one back.
        return _SURROGATES.sub("\ufffd", text).encode("utf-8")


def encoder_line(value: Any) -> bytes:
    """``json.NewEncoder(w).Encode(value)``: :func:`dumps` plus the newline Encode appends."""
    return dumps(value) + b"\n"


def go_map_deep(value: Any) -> Any:
    """``value`` with every nested mapping sorted, as Go marshals a decoded ``map[string]any``.

    A :class:`Verbatim` inside is left as it is, as Go leaves a ``json.RawMessage``.
    """
    if isinstance(value, dict):
        return {key: go_map_deep(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [go_map_deep(item) for item in value]
    return value


def format_float(number: float) -> str:
    """A float64 the way ``encoding/json`` prints it (``1`` not ``1.0``, ``1e-7``, ``1e+21``)."""
    if not math.isfinite(number):
        raise ValueError(f"json: unsupported value: {number!r}")
    if number == 0.0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(number)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(str(d) for d in digit_tuple)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    point = len(digits) + exponent
    prefix = "-" if sign else ""
    magnitude = abs(number)
    if magnitude < 1e-6 or magnitude >= 1e21:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        power = point - 1
        if power < 0:
            # Go writes e-07 and then trims it to e-7; positive exponents keep two digits.
            return f"{prefix}{mantissa}e-{-power}" if power > -10 else f"{prefix}{mantissa}e-{-power:02d}"
        return f"{prefix}{mantissa}e+{power:02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{prefix}{digits}{'0' * (point - len(digits))}"
    return f"{prefix}{digits[:point]}.{digits[point:]}"


def _encode(value: Any, parts: list[str]) -> None:
    if isinstance(value, Verbatim):
        value = value.value
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, str):
        parts.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, int):
        parts.append(str(value))
    elif isinstance(value, float):
        parts.append(format_float(value))
    elif isinstance(value, dict):
        parts.append("{")
        first = True
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"json: unsupported map key {key!r}")
            if not first:
                parts.append(",")
            first = False
            parts.append(json.dumps(key, ensure_ascii=False))
            parts.append(":")
            _encode(item, parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _encode(item, parts)
        parts.append("]")
    else:
        raise TypeError(f"json: unsupported type: {type(value).__name__}")


_SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _go_strings(value: Any) -> Any:
    """``value`` with every lone surrogate (an escape such as ``"\\ud800"`` with no partner) as
    U+FFFD, which is what Go decodes it to; Python keeps the surrogate, which no UTF-8 encoder
    writes. Called only when the text has such an escape."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_go_strings(key): _go_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_go_strings(item) for item in value]
    return value


class _NonStandardConstant(ValueError):
    """Python's scanner met NaN or Infinity, which Go rejects."""


def _reject_constant(name: str) -> Any:
    raise _NonStandardConstant(name)


def _go_float(text: str) -> float:
    """A number Go's ``strconv.ParseFloat`` reads; past float64's range (``1e400``) Go's decoder
    fails the body (its message also names the struct field, which this one cannot know)."""
    value = float(text)
    if math.isinf(value):
        raise GoJSONError(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_go_float)

MAX_NESTING_DEPTH = 10_000
"""``maxNestingDepth`` of ``encoding/json``'s scanner: deeper, Go refuses the body."""

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class TooDeep(ValueError):
    """Nested deeper than Python's parser goes, yet within Go's limit: Ollama reads such a body,
    so it is sent to Ollama as it is, ungoverned."""


def _too_deep(text: str, start: int) -> GoJSONError | TooDeep:
    """After a ``RecursionError``: Go's error when the nesting passes its limit, else ``TooDeep``.
    Strings are cut out first (brackets in a prompt do not nest), both by regex."""
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub("", text[start:])):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                return GoJSONError(f"invalid character {quote_char(char)} exceeded max depth")
        else:
            depth -= 1
    return TooDeep("a body nested deeper than the governor's JSON parser goes is sent as it is")


def loads(raw: bytes) -> Any:
    """The first JSON value in ``raw``, as gin's ``ShouldBindJSON`` reads a request body.

    Raises :class:`GoJSONError` with Go's message: ``EOF`` for an empty body, ``unexpected
    EOF`` for a cut-off one, ``invalid character 'x' looking for beginning of value`` and its
    siblings for syntax errors. Text after the first value is ignored, as Go's Decoder does.
    """
    text = raw.decode("utf-8", errors="replace")
    start = 0
    while start < len(text) and text[start] in _GO_WHITESPACE:
        start += 1
    if start == len(text):
        raise GoJSONError("EOF")
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except RecursionError:
        raise _too_deep(text, start) from None
    except _NonStandardConstant:
        position = _first_bare_constant(text, start)
        char = text[position]
        if char == "-":
            raise GoJSONError(
                f"invalid character {quote_char(text[position + 1])} in numeric literal"
            ) from None
        raise GoJSONError(f"invalid character {quote_char(char)} looking for beginning of value") from None
    except json.JSONDecodeError as error:
        raise GoJSONError(_go_syntax_message(text, error)) from None
    return _go_strings(value) if _SURROGATE_ESCAPE.search(text) else value


def unmarshal(text: str) -> Any:
    """``json.Unmarshal`` of a whole string: like :func:`loads`, but nothing may follow the value.

    Go's messages differ from the streaming decoder's: ``unexpected end of JSON input`` for an
    empty or cut-off text, ``invalid character 'x' after top-level value`` for trailing data.
    """
    start = 0
    while start < len(text) and text[start] in _GO_WHITESPACE:
        start += 1
    if start == len(text):
        raise GoJSONError("unexpected end of JSON input")
    try:
        value, end = _DECODER.raw_decode(text, start)
    except RecursionError:
        raise _too_deep(text, start) from None
    except _NonStandardConstant:
        position = _first_bare_constant(text, start)
        raise GoJSONError(
            f"invalid character {quote_char(text[position])} looking for beginning of value"
        ) from None
    except json.JSONDecodeError as error:
        message = _go_syntax_message(text, error)
        raise GoJSONError(
            "unexpected end of JSON input" if message == "unexpected EOF" else message
        ) from None
    while end < len(text) and text[end] in _GO_WHITESPACE:
        end += 1
    if end < len(text):
        raise GoJSONError(f"invalid character {quote_char(text[end])} after top-level value")
    return _go_strings(value) if _SURROGATE_ESCAPE.search(text) else value


def quote_char(char: str) -> str:
    """Go's ``quoteChar``: how its syntax errors show the offending byte."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    code = ord(char)
    if code >= 0x80:
        return f"'\\x{char.encode('utf-8', 'surrogatepass')[0]:02x}'"
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    if char in named:
        return f"'{named[char]}'"
    if code < 0x20 or code == 0x7F:
        return f"'\\x{code:02x}'"
    if char == "\\":
        return "'\\\\'"
    return f"'{char}'"


def _go_syntax_message(text: str, error: json.JSONDecodeError) -> str:
    position = error.pos
    message = error.msg
    if position >= len(text) or message.startswith("Unterminated string"):
        return "unexpected EOF"
    char = text[position]
    if message.startswith("Expecting property name"):
        return f"invalid character {quote_char(char)} looking for beginning of object key string"
    if message.startswith("Expecting ':'"):
        return f"invalid character {quote_char(char)} after object key"
    if message.startswith("Expecting ','"):
        where = (
            "after object key:value pair"
            if _innermost_container(text, position) == "{"
            else "after array element"
        )
        return f"invalid character {quote_char(char)} {where}"
    if message.startswith("Invalid control character"):
        return f"invalid character {quote_char(char)} in string literal"
    if message.startswith("Invalid \\uXXXX"):
        bad = quote_char(_first_non_hex(text, position + 2))
        return f"invalid character {bad} in \\u hexadecimal character escape"
    if message.startswith("Invalid \\escape"):
        following = text[position + 1] if position + 1 < len(text) else char
        return f"invalid character {quote_char(following)} in string escape code"
    return f"invalid character {quote_char(char)} looking for beginning of value"


def _first_non_hex(text: str, start: int) -> str:
    for char in text[start : start + 4]:
        if char not in "0123456789abcdefABCDEF":
            return char
    return text[start] if start < len(text) else "\\"


def _innermost_container(text: str, end: int) -> str:
    stack: list[str] = []
    in_string = False
    escaped = False
    for char in text[:end]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _first_bare_constant(text: str, start: int) -> int:
    """Where NaN, Infinity or -Infinity first appears outside a string."""
    in_string = False
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif text.startswith(("NaN", "Infinity", "-Infinity"), index):
            return index
    return start
