"""Ollama's ``keep_alive`` values: parse them the way Ollama does, so a policy cannot send one it rejects.

Ollama accepts a number (seconds, floats allowed, negative = forever) or a Go duration string
("5m", "1h30m", "-1m"); a bare numeric string such as "300" is a 400 error (``api.Duration``).
"""

from __future__ import annotations

import functools
import math
import re

KeepAlive = str | int | float
"""A keep_alive value exactly as it travels in JSON: a number of seconds or a Go duration string."""

_GO_UNITS_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


@functools.lru_cache(maxsize=256)
def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string; raises ValueError like Go does.

    Remembered: one governed request reads the same few values four times over (the client's,
    the policy's, the decision's check and the scheduler's prediction); refusals are not kept.
    """
    s = text.strip()
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _GO_UNITS_S[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def keep_alive_seconds(value: object) -> float:
    """Seconds a keep_alive value means to Ollama (``math.inf`` for forever).

    Raises ValueError with Ollama-like wording for values Ollama would refuse.
    """
    if isinstance(value, bool):
        raise ValueError(f"keep_alive must be a number of seconds or a duration string, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_go_duration(value)
    else:
        raise ValueError(f"keep_alive must be a number of seconds or a duration string, not {value!r}")
    if math.isnan(seconds):
        raise ValueError("keep_alive must not be NaN")
    return math.inf if seconds < 0 else seconds


def validate_keep_alive(value: object) -> KeepAlive:
    """Return ``value`` unchanged when Ollama would accept it, else raise ValueError."""
    keep_alive_seconds(value)
    return value  # type: ignore[return-value]  # checked above: str | int | float


def format_keep_alive(value: KeepAlive | None) -> str | None:
    """A stable text form for logs and the results store ("30m", "300", "-1")."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
