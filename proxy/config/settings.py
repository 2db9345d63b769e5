"""The typed config sections: ``[gpu]``, ``[ollama]``, ``[store]``, ``[limits]`` and ``[balancer]``.

Each section is a frozen dataclass parsed here, in the config layer, so that the modules that
use a setting import it from here and the config never imports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from policies.duration import keep_alive_seconds
from policies.memory import GIB, MIB
from policies.model import parse_version
from proxy.config.reader import (
    Table,
    as_int,
    as_positive_days,
    as_positive_int,
    as_seconds,
    as_size,
    as_str,
    kind,
    one_of,
)

SourceName = Literal["auto", "nvml", "amdgpu", "apple", "system", "ollama", "none"]
SOURCE_NAMES: tuple[SourceName, ...] = ("auto", "nvml", "amdgpu", "apple", "system", "ollama", "none")
"""What each reads: docs/memory-sources.md."""
DEVICE_SOURCES: tuple[SourceName, ...] = ("nvml", "amdgpu", "auto")
SYSFS_SOURCES: tuple[SourceName, ...] = ("amdgpu", "auto")
MEMINFO_SOURCES: tuple[SourceName, ...] = ("system", "auto")
DEFAULT_SYSFS_ROOT = Path("/")
DEFAULT_MEMINFO_PATH = Path("/proc/meminfo")
DEFAULT_INTERVAL_S = 0.5
DEFAULT_RESERVE_BYTES = GIB
MIN_INTERVAL_S = 0.05
"""A shorter interval would keep a core busy polling NVML for no better decisions."""

KV_CACHE_TYPES = ("f16", "f32", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")


@dataclass(frozen=True, slots=True)
class GpuSettings:
    """``[gpu]``: where free memory is read from (docs/memory-sources.md).

    TOML keys: ``source``, ``devices``, ``vram_total``, ``sysfs_root``, ``meminfo_path``,
    ``reserve``, ``interval``.
    """

    source: SourceName = "auto"
    devices: tuple[str, ...] | None = None
    """NVML indexes or UUIDs (``CUDA_VISIBLE_DEVICES`` style), or amdgpu card numbers; None means
    every GPU."""
    vram_total_bytes: tuple[int, ...] = ()
    """One total per GPU; only for ``source = "ollama"``."""
    reserve_bytes: int = DEFAULT_RESERVE_BYTES
    interval_s: float = DEFAULT_INTERVAL_S
    sysfs_root: Path = DEFAULT_SYSFS_ROOT
    """Where sysfs is mounted, for ``amdgpu`` (a container may see the host's at ``/host``)."""
    meminfo_path: Path = DEFAULT_MEMINFO_PATH
    """The ``/proc/meminfo`` the ``system`` source reads."""


FlashAttention = Literal["auto", "on", "off"]


@dataclass(frozen=True, slots=True)
class OllamaSettings:
    """``[ollama]``: how Ollama is run, where the governor cannot read it from Ollama itself.

    The governor cannot see Ollama's environment, so these must match it: ``num_parallel`` is
    ``OLLAMA_NUM_PARALLEL``, ``kv_cache_type`` ``OLLAMA_KV_CACHE_TYPE``, ``context_length``
    ``OLLAMA_CONTEXT_LENGTH`` (None: unset, the VRAM tier applies), ``gpu_overhead_bytes``
    ``OLLAMA_GPU_OVERHEAD``, ``max_loaded_models`` ``OLLAMA_MAX_LOADED_MODELS`` (0: automatic),
    ``keep_alive`` ``OLLAMA_KEEP_ALIVE`` and ``flash_attention`` ``OLLAMA_FLASH_ATTENTION``.
    What Ollama reports (its version, the models' facts, what is loaded) is read from it.
    """

    num_parallel: int = 1
    kv_cache_type: str = "f16"
    version: tuple[int, int, int] | None = None
    ps_interval_s: float = 5.0
    facts_wait_s: float = 2.0
    context_length: int | None = None
    gpu_overhead_bytes: int = 0
    max_loaded_models: int = 0
    keep_alive: str = "5m"
    flash_attention: FlashAttention = "auto"


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


def _as_absolute_path(value: object) -> Path:
    if not isinstance(value, str):
        raise TypeError(f'expected a path such as "/host", got {kind(value)}')
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"expected an absolute path, got {value!r}")
    return path


def _only_with(sources: tuple[SourceName, ...]) -> str:
    """``"a" or "b"`` / ``"a", "b" or "c"``, for "only used with" errors."""
    quoted = [f'"{name}"' for name in sources]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _as_interval(value: object) -> float:
    interval_s = as_seconds(value)
    if interval_s < MIN_INTERVAL_S:
        raise ValueError(f"expected at least 50ms, got {value!r}")
    return interval_s


def as_non_negative_int(value: object) -> int:
    """A TOML integer of 0 or more."""
    number = as_int(value)
    if number < 0:
        raise ValueError(f"expected 0 or a positive integer, got {number}")
    return number


def _as_keep_alive(value: object) -> str:
    """An Ollama keep_alive as OLLAMA_KEEP_ALIVE takes it (a duration, or bare seconds)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f'expected a duration such as "5m" or a number of seconds, got {kind(value)}')
    text = str(value).strip()
    try:
        keep_alive_seconds(int(text) if text.lstrip("-").isdigit() else text)
    except ValueError as exc:
        raise ValueError(f'expected a duration such as "5m" or a number of seconds: {exc}') from None
    return text


def _as_enabled(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def parse_gpu_section(table: Table) -> GpuSettings:
    """Validate ``[gpu]``; each mistake is one ``ConfigError`` naming the file, key and fix."""
    source = cast(SourceName, table.get("source", one_of(*SOURCE_NAMES), "auto"))
    given = {key for key in ("devices", "vram_total", "sysfs_root", "meminfo_path") if table.has(key)}
    devices = table.get("devices", _as_devices, None)
    no_totals: tuple[int, ...] = ()
    settings = GpuSettings(
        source=source,
        devices=devices,
        vram_total_bytes=table.get("vram_total", _as_vram_totals, no_totals),
        reserve_bytes=table.get("reserve", as_size, DEFAULT_RESERVE_BYTES),
        interval_s=table.get("interval", _as_interval, DEFAULT_INTERVAL_S),
        sysfs_root=table.get("sysfs_root", _as_absolute_path, DEFAULT_SYSFS_ROOT),
        meminfo_path=table.get("meminfo_path", _as_absolute_path, DEFAULT_MEMINFO_PATH),
    )
    table.finish()
    if source == "ollama" and "vram_total" not in given:
        raise table.error(
            "vram_total", 'missing: source = "ollama" needs the total VRAM of each GPU, e.g. ["24GiB"]'
        )
    if source != "ollama" and "vram_total" in given:
        raise table.error("vram_total", 'only used with source = "ollama"; remove it or set that source')
    applies = {"devices": DEVICE_SOURCES, "sysfs_root": SYSFS_SOURCES, "meminfo_path": MEMINFO_SOURCES}
    for key, sources in applies.items():
        if key in given and source not in sources:
            reason = f"only used with source = {_only_with(sources)}, not {source!r}; remove it"
            raise table.error(key, reason)
    if source == "amdgpu" and devices is not None:
        uuids = [device for device in devices if not device.isdigit()]
        if uuids:
            raise table.error(
                "devices", f'source = "amdgpu" selects cards by number (1 for card1), got {uuids[0]!r}'
            )
    return settings


def parse_ollama_section(table: Table) -> OllamaSettings:
    """Validate ``[ollama]``."""
    version_text = table.get("version", as_str, None)
    try:
        version = parse_version(version_text) if version_text else None
    except ValueError as exc:
        raise table.error("version", str(exc)) from None
    context_length = table.get("context_length", as_non_negative_int, 0)
    settings = OllamaSettings(
        num_parallel=table.get("num_parallel", as_positive_int, 1),
        kv_cache_type=table.get("kv_cache_type", one_of(*KV_CACHE_TYPES), "f16"),
        version=version,
        ps_interval_s=table.get("ps_interval", as_seconds, 5.0),
        facts_wait_s=table.get("facts_wait", as_seconds, 2.0),
        context_length=context_length or None,
        gpu_overhead_bytes=table.get("gpu_overhead", as_size, 0),
        max_loaded_models=table.get("max_loaded_models", as_non_negative_int, 0),
        keep_alive=table.get("keep_alive", _as_keep_alive, "5m"),
        flash_attention=cast(
            FlashAttention, table.get("flash_attention", one_of("auto", "on", "off"), "auto")
        ),
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


DEFAULT_MIN_WEIGHT_PCT = 50
"""The least weight the agent answers while ready: a full node still serves the models it holds,
and weights move within half the range, so few models move (``python -m bench cluster``)."""


@dataclass(frozen=True, slots=True)
class BalancerSettings:
    """``[balancer]``: the signals a load balancer in front of several governors reads
    (docs/cluster.md). Off by default: no agent listens and a stop drains at once.

    TOML keys: ``agent_listen``, ``announce``, ``min_weight``.
    """

    agent_host: str | None = None
    """Where the HAProxy agent-check responder listens (None: it does not)."""
    agent_port: int | None = None
    announce_s: float = 0.0
    """On SIGTERM, how long readiness says 503 and the agent ``drain`` while the governor still
    takes requests, so the balancer's next check sees it before the listener closes. It is part
    of ``[limits] drain_timeout``, not added to it."""
    min_weight_pct: int = DEFAULT_MIN_WEIGHT_PCT
    """The floor of the agent's weight (percent of the weight in the balancer's config)."""

    @property
    def agent_listen(self) -> str | None:
        """``host:port`` of the agent, as written in the config, or None when it is off."""
        if self.agent_host is None or self.agent_port is None:
            return None
        host = f"[{self.agent_host}]" if ":" in self.agent_host else self.agent_host
        return f"{host}:{self.agent_port}"


def _as_agent_listen(value: object) -> tuple[str, int] | None:
    text = as_str(value).strip()
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\]:(?P<port>\d+)|(?P<host>[^:\[\]]*):(?P<port4>\d+)", text)
    if match is None:
        raise ValueError(f'expected host:port such as "127.0.0.1:11436", got {text!r}')
    if match.group("host") == "":
        raise ValueError(f'name the address too, e.g. "127.0.0.1{text}" (or "0.0.0.0{text}" for every one)')
    port = int(match.group("port") or match.group("port4"))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return match.group("v6") or match.group("host"), port


def _as_weight_pct(value: object) -> int:
    number = as_int(value)
    if not 1 <= number <= 100:
        raise ValueError(f"expected a percentage from 1 to 100, got {number}")
    return number


def parse_balancer_section(table: Table) -> BalancerSettings:
    """Validate ``[balancer]`` (``announce`` against ``drain_timeout`` is checked by the caller)."""
    agent = table.get("agent_listen", _as_agent_listen, None)
    settings = BalancerSettings(
        agent_host=None if agent is None else agent[0],
        agent_port=None if agent is None else agent[1],
        announce_s=table.get("announce", as_seconds, 0.0),
        min_weight_pct=table.get("min_weight", _as_weight_pct, DEFAULT_MIN_WEIGHT_PCT),
    )
    table.finish()
    return settings
