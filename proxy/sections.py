"""The optional config sections, each parsed by the module that owns the setting."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config import _Table, as_positive_int, as_seconds
from proxy.facts import OllamaSettings, parse_ollama_section
from proxy.gpu import GpuSettings, parse_gpu_section


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """``[store]``: how long results are kept and how often they are written."""

    retention_days: float = 30.0
    max_rows: int = 1_000_000
    flush_interval_s: float = 1.0
    enabled: bool = True


def _positive_days(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"expected a positive number of days, got {value!r}")
    return float(value)


def _enabled(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def parse_store_section(table: _Table) -> StoreSettings:
    """Read ``[store]``."""
    settings = StoreSettings(
        retention_days=table.get("retention_days", _positive_days, 30.0),
        max_rows=table.get("max_rows", as_positive_int, 1_000_000),
        flush_interval_s=table.get("flush_interval", as_seconds, 1.0),
        enabled=table.get("enabled", _enabled, True),
    )
    table.finish()
    return settings


SECTIONS: Mapping[str, Callable[[_Table], Any]] = {
    "ollama": parse_ollama_section,
    "gpu": parse_gpu_section,
    "store": parse_store_section,
}


def ollama_settings(extra: Mapping[str, Any]) -> OllamaSettings:
    """``[ollama]`` from a parsed config, or its defaults."""
    value = extra.get("ollama")
    return value if isinstance(value, OllamaSettings) else OllamaSettings()


def gpu_settings(extra: Mapping[str, Any]) -> GpuSettings:
    """``[gpu]`` from a parsed config, or its defaults."""
    value = extra.get("gpu")
    return value if isinstance(value, GpuSettings) else GpuSettings()


def store_settings(extra: Mapping[str, Any]) -> StoreSettings:
    """``[store]`` from a parsed config, or its defaults."""
    value = extra.get("store")
    return value if isinstance(value, StoreSettings) else StoreSettings()
