"""The typed config sections: ``[gpu]``, ``[ollama]``, ``[store]`` and ``[limits]``.

Each section is a frozen dataclass parsed here, in the config layer, so that the modules that
use a setting import it from here and the config never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from policies.memory import GIB, MIB
from policies.model import parse_version
from proxy.config.reader import (
    Table,
    as_positive_days,
    as_positive_int,
    as_seconds,
    as_size,
    as_str,
    kind,
    one_of,
)

SourceName = Literal["auto", "nvml", "ollama", "none"]
SOURCE_NAMES: tuple[SourceName, ...] = ("auto", "nvml", "ollama", "none")
DEFAULT_INTERVAL_S = 0.5
DEFAULT_RESERVE_BYTES = GIB
MIN_INTERVAL_S = 0.05
"""A shorter interval would keep a core busy polling NVML for no better decisions."""

KV_CACHE_TYPES = ("f16", "f32", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")


@dataclass(frozen=True, slots=True)
class GpuSettings:
    """``[gpu]``: where free memory is read from.

    TOML keys: ``source``, ``devices``, ``vram_total``, ``reserve``, ``interval``.
    """

    source: SourceName = "auto"
    devices: tuple[str, ...] | None = None
    """NVML indexes or UUIDs (``CUDA_VISIBLE_DEVICES`` style); None means every GPU."""
    vram_total_bytes: tuple[int, ...] = ()
    """One total per GPU; only for ``source = "ollama"``."""
    reserve_bytes: int = DEFAULT_RESERVE_BYTES
    interval_s: float = DEFAULT_INTERVAL_S


@dataclass(frozen=True, slots=True)
class OllamaSettings:
    """``[ollama]``: how Ollama is run, as far as memory goes.

    The governor cannot read Ollama's environment, so ``num_parallel`` and ``kv_cache_type``
    must match ``OLLAMA_NUM_PARALLEL`` and ``OLLAMA_KV_CACHE_TYPE``.
    """

    num_parallel: int = 1
    kv_cache_type: str = "f16"
    version: tuple[int, int, int] | None = None
    ps_interval_s: float = 5.0
    facts_wait_s: float = 2.0


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """``[store]``: how long results are kept and how often they are written."""

    retention_days: float = 30.0
    max_rows: int = 1_000_000
    flush_interval_s: float = 1.0
    enabled: bool = True


def _as_devices(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[object] = [part.strip() for part in value.split(",")]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise TypeError(f'expected a list such as [0, 1] or a string such as "0,1", got {kind(value)}')
    if not items or items == [""]:
        raise ValueError("expected at least one GPU; leave devices out to use every GPU")
    devices: list[str] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            device = str(item)
        elif isinstance(item, str) and (item.strip().isdigit() or item.strip().startswith(("GPU-", "MIG-"))):
            device = item.strip()
        else:
            raise ValueError(f'expected GPU indexes such as 0 or UUIDs such as "GPU-8f6c...", got {item!r}')
        if device in devices:
            raise ValueError(f"GPU {device!r} is listed twice")
        devices.append(device)
    return tuple(devices)


def _as_vram_totals(value: object) -> tuple[int, ...]:
    totals = tuple(as_size(item) for item in value) if isinstance(value, list) else (as_size(value),)
    if not totals:
        raise ValueError('expected one size per GPU such as ["24GiB", "24GiB"]')
    if any(total == 0 for total in totals):
        raise ValueError("a GPU's total VRAM must be more than 0")
    return totals


def _as_interval(value: object) -> float:
    interval_s = as_seconds(value)
    if interval_s < MIN_INTERVAL_S:
        raise ValueError(f"expected at least 50ms, got {value!r}")
    return interval_s


def _as_enabled(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def parse_gpu_section(table: Table) -> GpuSettings:
    """Validate ``[gpu]``; each mistake is one ``ConfigError`` naming the file, key and fix."""
    source = cast(SourceName, table.get("source", one_of(*SOURCE_NAMES), "auto"))
    devices_given = table.has("devices")
    devices = table.get("devices", _as_devices, None)
    totals_given = table.has("vram_total")
    no_totals: tuple[int, ...] = ()
    settings = GpuSettings(
        source=source,
        devices=devices,
        vram_total_bytes=table.get("vram_total", _as_vram_totals, no_totals),
        reserve_bytes=table.get("reserve", as_size, DEFAULT_RESERVE_BYTES),
        interval_s=table.get("interval", _as_interval, DEFAULT_INTERVAL_S),
    )
    table.finish()
    if source == "ollama" and not totals_given:
        raise table.error(
            "vram_total", 'missing: source = "ollama" needs the total VRAM of each GPU, e.g. ["24GiB"]'
        )
    if source != "ollama" and totals_given:
        raise table.error("vram_total", 'only used with source = "ollama"; remove it or set that source')
    if source not in ("auto", "nvml") and devices_given:
        raise table.error("devices", f'only used with source = "nvml" or "auto", not {source!r}; remove it')
    return settings


def parse_ollama_section(table: Table) -> OllamaSettings:
    """Validate ``[ollama]``."""
    version_text = table.get("version", as_str, None)
    try:
        version = parse_version(version_text) if version_text else None
    except ValueError as exc:
        raise table.error("version", str(exc)) from None
    settings = OllamaSettings(
        num_parallel=table.get("num_parallel", as_positive_int, 1),
        kv_cache_type=table.get("kv_cache_type", one_of(*KV_CACHE_TYPES), "f16"),
        version=version,
        ps_interval_s=table.get("ps_interval", as_seconds, 5.0),
        facts_wait_s=table.get("facts_wait", as_seconds, 2.0),
    )
    table.finish()
    return settings


def parse_store_section(table: Table) -> StoreSettings:
    """Validate ``[store]``."""
    settings = StoreSettings(
        retention_days=table.get("retention_days", as_positive_days, 30.0),
        max_rows=table.get("max_rows", as_positive_int, 1_000_000),
        flush_interval_s=table.get("flush_interval", as_seconds, 1.0),
        enabled=table.get("enabled", _as_enabled, True),
    )
    table.finish()
    return settings


DEFAULT_MAX_GOVERNED_BODY_BYTES = 16 * MIB
"""Bodies larger than this (many big images) are relayed as they are, streaming, ungoverned."""
MIN_GOVERNED_BODY_BYTES = 64 * 1024
"""A smaller limit would leave ordinary chats ungoverned."""


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """``[limits]``: how long a client or Ollama may take, how big a governed body may be, and
    how long a stop may wait for streams in flight. Each bound turns a stuck peer into a clear
    error instead of a connection held forever.

    TOML keys: ``header_timeout``, ``body_timeout``, ``first_byte_timeout``,
    ``stream_idle_timeout``, ``drain_timeout``, ``max_governed_body``. A timeout of 0 turns it
    off, except ``header_timeout`` and ``drain_timeout``, which must be above 0.
    """

    header_timeout_s: float = 60.0
    """A connection must send a request's complete head within this, counted from when it opened
    or its previous response ended; an idle keep-alive connection is closed after it too."""
    body_timeout_s: float = 60.0
    """The longest pause while a client sends a governed body (the governor reads it whole)."""
    first_byte_timeout_s: float = 600.0
    """How long Ollama may take to start its answer: a model load, and for ``stream: false``
    the whole generation. Past it the client gets 504."""
    stream_idle_timeout_s: float = 300.0
    """The longest pause between two pieces of Ollama's answer; past it the stream is ended with
    Ollama's error line."""
    drain_timeout_s: float = 20.0
    """On SIGTERM, streams in flight get this long to finish before they are cut; the process
    exits within it. Keep it below systemd's ``TimeoutStopSec`` (30 s in the shipped unit)."""
    max_governed_body_bytes: int = DEFAULT_MAX_GOVERNED_BODY_BYTES
    """A larger generate or chat body is relayed as it is, streaming and ungoverned; never refused."""


def _as_positive_seconds(value: object) -> float:
    seconds = as_seconds(value)
    if seconds <= 0:
        raise ValueError(f'expected a duration above zero such as "30s", got {value!r}')
    return seconds


def _as_body_limit(value: object) -> int:
    size = as_size(value)
    if size < MIN_GOVERNED_BODY_BYTES:
        raise ValueError(f"expected at least 64KiB, got {value!r}; bigger bodies are relayed ungoverned")
    return size


def parse_limits_section(table: Table) -> LimitsSettings:
    """Validate ``[limits]``."""
    defaults = LimitsSettings()
    settings = LimitsSettings(
        header_timeout_s=table.get("header_timeout", _as_positive_seconds, defaults.header_timeout_s),
        body_timeout_s=table.get("body_timeout", as_seconds, defaults.body_timeout_s),
        first_byte_timeout_s=table.get("first_byte_timeout", as_seconds, defaults.first_byte_timeout_s),
        stream_idle_timeout_s=table.get("stream_idle_timeout", as_seconds, defaults.stream_idle_timeout_s),
        drain_timeout_s=table.get("drain_timeout", _as_positive_seconds, defaults.drain_timeout_s),
        max_governed_body_bytes=table.get(
            "max_governed_body", _as_body_limit, defaults.max_governed_body_bytes
        ),
    )
    table.finish()
    return settings
