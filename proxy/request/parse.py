"""Read the parts of a governed request body the governor needs, exactly as Ollama would read them.

Anything the governor cannot understand (not JSON, no model, an option of the wrong type, a value
Ollama refuses) is not governed: the client's bytes go to Ollama untouched and the client gets
Ollama's own answer. Parsing never raises for any input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from policies.context import Endpoint
from policies.duration import KeepAlive, keep_alive_seconds
from policies.records import cheap_init
from proxy.request.prompt import EMBED_ENDPOINTS, PromptSize, measure

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class _NotGoverned(Exception):
    """The body is something Ollama itself must answer."""


@cheap_init
@dataclass(frozen=True, slots=True)
class ClientRequest:
    """What the client asked for; ``body`` is kept for rewriting and never logged or stored."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    num_ctx: int | None
    """``options.num_ctx`` as Ollama reads it, or None when absent (or not positive)."""
    keep_alive: KeepAlive | None
    num_predict: int | None
    stream: bool
    prompt: PromptSize


def _refuse_constant(name: str) -> Any:
    raise _NotGoverned(f"{name} is not JSON")  # Go's decoder refuses NaN and Infinity too


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotGoverned("number out of range")  # 1e400: Go's decoder refuses it as well
    return value


_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
"""Made once: ``json.loads`` with options builds a decoder per call."""


def parse_json_object(raw: bytes) -> dict[str, Any] | None:
    """A JSON object decoded as strictly as Go's ``encoding/json``, or None for anything else.

    NaN, Infinity and out-of-range numbers are refused (Python accepts them, Ollama does not),
    and a body nested too deep for the parser is refused instead of raising ``RecursionError``.
    The bytes are decoded as ``json.loads`` decodes them.
    """
    try:
        value = _STRICT.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, RecursionError, _NotGoverned):  # UnicodeDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def go_int(value: object) -> int | None:
    """An integer option the way Ollama reads one (``Options.FromMap``), or None when it refuses.

    Floats are truncated toward zero; a float beyond the int64 range converts as Go does on
    amd64 (to the smallest int64), which is why Ollama answers ``num_ctx: 1e30`` with a 4-token
    context. Booleans, strings and other types are refused (Ollama answers 500).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not INT64_MIN <= value < 2.0**63:
            return INT64_MIN
        return int(value)
    return value if INT64_MIN <= value <= INT64_MAX else INT64_MIN


def parse_request(endpoint: Endpoint, raw: bytes) -> ClientRequest | None:
    """The request, or None when it is not something to govern (Ollama will answer it)."""
    body = parse_json_object(raw)
    if body is None:
        return None
    model = body.get("model")
    options = body.get("options")
    if not isinstance(model, str) or not model or not (options is None or isinstance(options, dict)):
        return None
    options = options or {}
    num_ctx = _option(options, "num_ctx")
    num_predict = _option(options, "num_predict")
    if num_ctx is False or num_predict is False:
        return None
    keep_alive = body.get("keep_alive")
    if keep_alive is not None:
        try:
            keep_alive_seconds(keep_alive)
        except ValueError:
            return None
    return ClientRequest(
        endpoint=endpoint,
        body=body,
        model=model,
        num_ctx=num_ctx if isinstance(num_ctx, int) and num_ctx > 0 else None,
        keep_alive=keep_alive,
        num_predict=num_predict if isinstance(num_predict, int) and num_predict else None,
        stream=body.get("stream") is not False and endpoint not in EMBED_ENDPOINTS,
        prompt=measure(endpoint, body),
    )


def _option(options: dict[str, Any], name: str) -> int | bool | None:
    """The option as Ollama reads it; None when absent, False when Ollama would refuse it."""
    if name not in options or options[name] is None:
        return None
    number = go_int(options[name])
    return False if number is None else number
