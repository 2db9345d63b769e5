"""Reading TOML tables key by key into typed values, with one exact error per mistake.

Every config section is parsed with a ``Table``: each ``get`` pops a key and converts it, and
``finish`` reports whatever is left as an unknown key, naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from policies.duration import parse_go_duration
from policies.memory import parse_size

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration that must not be served; the message says where and why."""


class Table:
    """Reads one TOML table key by key; whatever is left over is an unknown key."""

    def __init__(self, source: str, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: {path or 'top level'}: expected a table, got {kind(data)}")
        self.source = source
        self.path = path
        self.data: dict[str, Any] = dict(data)

    def key(self, name: str) -> str:
        """The dotted path of ``name`` in this table, for messages."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> ConfigError:
        """A ConfigError naming the file, the key and ``reason``."""
        return ConfigError(f"{self.source}: {self.key(name)}: {reason}")

    def get(self, name: str, convert: Callable[[object], T], default: T) -> T:
        """Pop ``name`` and convert it, or ``default`` when it is absent."""
        if name not in self.data:
            return default
        value = self.data.pop(name)
        try:
            return convert(value)
        except (TypeError, ValueError) as exc:
            raise self.error(name, str(exc)) from None

    def has(self, name: str) -> bool:
        """Whether the table (still) holds ``name``."""
        return name in self.data

    def finish(self) -> None:
        """Refuse any key no ``get`` asked for."""
        if self.data:
            unknown = ", ".join(repr(k) for k in sorted(self.data))
            where = f"[{self.path}]" if self.path else "the top level"
            raise ConfigError(f"{self.source}: unknown key {unknown} in {where}")


def kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def as_str(value: object) -> str:
    """A TOML string."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {kind(value)}")
    return value


def as_bool(value: object) -> bool:
    """A TOML boolean."""
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {kind(value)}")
    return value


def as_int(value: object) -> int:
    """A TOML integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {kind(value)}")
    return value


def as_positive_int(value: object) -> int:
    """A TOML integer above zero."""
    number = as_int(value)
    if number < 1:
        raise ValueError(f"expected a positive integer, got {number}")
    return number


def as_seconds(value: object) -> float:
    """A duration: a number of seconds or a Go-style string such as "250ms" or "5m"."""
    if isinstance(value, bool):
        raise TypeError(f'expected a duration such as "500ms" or a number of seconds, got {kind(value)}')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_go_duration(value)
    else:
        raise TypeError(f'expected a duration such as "500ms" or a number of seconds, got {kind(value)}')
    if seconds < 0:
        raise ValueError(f"expected a duration of zero or more, got {value!r}")
    return seconds


def duration_text(seconds: float) -> str:
    """``10m``, ``90s``, ``1.5s``, ``250ms``: a timeout as an operator wrote it (``0`` is off)."""
    if seconds == 0:
        return "off"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


def as_model_list(value: object) -> tuple[str, ...]:
    """A list of model names."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"expected an array of model names, got {kind(value)}")
    return tuple(value)


def one_of(*choices: str) -> Callable[[object], str]:
    """A string restricted to ``choices``."""

    def convert(value: object) -> str:
        text = as_str(value)
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {text!r}")
        return text

    return convert


def as_size(value: object) -> int:
    """A size: bytes as an integer or a string such as "24GiB"."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f'expected a size such as "24GiB" or a number of bytes, got {kind(value)}')
    return parse_size(value)


def as_positive_days(value: object) -> float:
    """A positive number of days."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"expected a positive number of days, got {value!r}")
    return float(value)
