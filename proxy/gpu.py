"""The GPU sampler: free VRAM per GPU, read in the background so a request only reads a cache.

A source reads the GPUs Ollama uses (NVML on the GPU host, or configured totals minus ``/api/ps``
when the governor runs elsewhere). ``GpuSampler`` calls it every ``interval_s`` and keeps the
latest ``GpuSnapshot``; the request path reads ``GpuSampler.snapshot`` and never waits on NVML.
NVML calls block, so they always run in a worker thread, never on the event loop.

A source never raises: when the GPUs cannot be read it returns a snapshot with no devices and an
``error``, logs ``gpu_unavailable`` once, and ``gpu_recovered`` when reading works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Literal, Protocol, cast

import aiohttp
import structlog

from policies.context import GpuDevice, GpuSnapshot
from policies.memory import GIB, format_bytes, parse_size
from proxy.config import _kind, _Table, as_seconds, one_of

log = structlog.get_logger("ollama_governor.gpu")

SourceName = Literal["auto", "nvml", "ollama", "none"]
DEFAULT_INTERVAL_S = 0.5
DEFAULT_RESERVE_BYTES = GIB
MIN_INTERVAL_S = 0.05
"""A shorter interval would keep a core busy polling NVML for no better decisions."""
PS_TIMEOUT_S = 2.0
"""``/api/ps`` answers in milliseconds; a slow one must not hold the sampler for long."""


class GpuSource(Protocol):
    """Where GPU numbers come from. ``read`` never raises; failures are snapshots with ``error``."""

    @property
    def name(self) -> str:
        """``nvml``, ``ollama`` or ``none``: copied into ``GpuSnapshot.source``."""
        ...

    async def read(self) -> GpuSnapshot:
        """The GPUs as of now (``taken_at`` and ``reserve_bytes`` are the sampler's to set)."""
        ...

    async def close(self) -> None:
        """Release what ``read`` acquired (NVML's handle); the source may be read again later."""
        ...


class _FailureLog:
    """Logs ``gpu_unavailable`` on the first failure of a streak and ``gpu_recovered`` after it.

    Why: a sampler reads twice a second, and a missing driver must cost one log line, not 7200
    an hour.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.failing: str | None = None

    def failed(self, error: str) -> None:
        if self.failing is None:
            log.warning("gpu_unavailable", source=self.source, error=error)
        self.failing = error

    def succeeded(self) -> None:
        if self.failing is not None:
            log.info("gpu_recovered", source=self.source, was=self.failing)
        self.failing = None


class _Unavailable(Exception):
    """NVML cannot be used; the message is the snapshot's ``error``."""


@dataclass(frozen=True, slots=True)
class _OpenDevice:
    index: int
    name: str
    handle: Any


class NvmlSource:
    """Per-GPU total/free/used memory and utilization from NVML (``pynvml``, nvidia-ml-py).

    ``devices`` selects GPUs the way ``CUDA_VISIBLE_DEVICES`` does, so the governor counts only
    the GPUs Ollama uses: NVML indexes (``0``, ``"2"``, as ``nvidia-smi`` numbers them) or UUIDs
    (``"GPU-8f6c..."``, ``"MIG-..."``). CUDA numbers GPUs fastest first unless
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so on a host with mixed GPUs prefer UUIDs. ``None`` is every
    GPU. ``nvml`` replaces the ``pynvml`` module (tests inject a fake one).

    NVML is opened on the first read and re-opened after a failure, so a driver that comes back
    (or a GPU that was reset) is picked up without a restart. Calls are serialised by a lock:
    a cancelled ``read`` leaves its thread running, and ``close`` must not shut NVML under it.
    """

    name = "nvml"

    def __init__(self, devices: Sequence[int | str] | None = None, nvml: ModuleType | None = None) -> None:
        self.devices: tuple[int | str, ...] | None = (
            None if devices is None else tuple(_device_key(d) for d in devices)
        )
        self._nvml: Any = nvml
        self._open: tuple[_OpenDevice, ...] | None = None
        self._lock = threading.Lock()
        self._failures = _FailureLog(self.name)

    async def read(self) -> GpuSnapshot:
        return await asyncio.to_thread(self.read_blocking)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_blocking)

    def read_blocking(self) -> GpuSnapshot:
        """One read of every selected GPU; blocks for NVML, so call it off the event loop."""
        with self._lock:
            try:
                devices = self._read_devices()
            except _Unavailable as exc:
                self._failures.failed(str(exc))
                return GpuSnapshot(source=self.name, error=str(exc))
            self._failures.succeeded()
            return GpuSnapshot(source=self.name, devices=devices)

    def open_blocking(self) -> None:
        """Initialise NVML and resolve the selected GPUs; raises ``_Unavailable`` with the reason."""
        with self._lock:
            self._ensure_open()

    def close_blocking(self) -> None:
        """Shut NVML down (NVML counts inits, so this undoes exactly ours)."""
        with self._lock:
            self._shutdown()

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise _Unavailable(
                    f"NVML unavailable: pynvml is not installed (pip install nvidia-ml-py): {exc}"
                ) from None
        return self._nvml

    def _ensure_open(self) -> tuple[_OpenDevice, ...]:
        if self._open is not None:
            return self._open
        nvml = self._module()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise _Unavailable(f"NVML unavailable: {exc}") from None
        try:
            self._open = self._resolve(nvml)
        except BaseException:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
            raise
        return self._open

    def _resolve(self, nvml: Any) -> tuple[_OpenDevice, ...]:
        try:
            count = int(nvml.nvmlDeviceGetCount())
            wanted: Sequence[int | str] = range(count) if self.devices is None else self.devices
            opened = []
            for key in wanted:
                if isinstance(key, int):
                    if key >= count:
                        raise _Unavailable(
                            f"GPU {key} is not present: NVML sees {count} GPU(s)"
                            + (f" (0-{count - 1})" if count else "")
                        )
                    handle, index = nvml.nvmlDeviceGetHandleByIndex(key), key
                else:
                    try:
                        handle = nvml.nvmlDeviceGetHandleByUUID(key)
                    except nvml.NVMLError as exc:
                        raise _Unavailable(f"GPU {key!r} not found: {exc}") from None
                    index = int(nvml.nvmlDeviceGetIndex(handle))
                opened.append(_OpenDevice(index, _text(nvml.nvmlDeviceGetName(handle)), handle))
        except nvml.NVMLError as exc:
            raise _Unavailable(f"NVML unavailable: {exc}") from None
        if not opened:
            raise _Unavailable("NVML sees no GPUs")
        return tuple(opened)

    def _read_devices(self) -> tuple[GpuDevice, ...]:
        opened = self._ensure_open()
        nvml = self._nvml
        try:
            return tuple(self._read_one(nvml, device) for device in opened)
        except nvml.NVMLError as exc:
            # A lost GPU or a reloaded driver invalidates the handles: start over next time.
            self._shutdown()
            raise _Unavailable(f"NVML read failed: {exc}") from None

    @staticmethod
    def _read_one(nvml: Any, device: _OpenDevice) -> GpuDevice:
        memory = nvml.nvmlDeviceGetMemoryInfo(device.handle)
        try:
            utilization_pct: int | None = int(nvml.nvmlDeviceGetUtilizationRates(device.handle).gpu)
        except nvml.NVMLError:
            utilization_pct = None  # Not Supported on MIG instances and some vGPUs
        return GpuDevice(
            index=device.index,
            name=device.name,
            total_bytes=int(memory.total),
            free_bytes=int(memory.free),
            used_bytes=int(memory.used),
            utilization_pct=utilization_pct,
        )

    def _shutdown(self) -> None:
        if self._open is None:
            return
        self._open = None
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


def _device_key(device: int | str) -> int | str:
    """An NVML index as an int, anything else as a UUID string."""
    if isinstance(device, int):
        return device
    text = device.strip()
    return int(text) if text.isdigit() else text


def _text(value: object) -> str:
    """Old pynvml versions return bytes for names and versions."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class JsonGetter(Protocol):
    """What ``OllamaPsSource`` needs of ``proxy.upstream.Upstream``."""

    async def get_json(self, path: str, timeout_s: float = ...) -> Any: ...


UpstreamGetter = Callable[[], JsonGetter]
"""Returns the current upstream; called on every read, so a reload's new upstream is used."""


class OllamaPsSource:
    """Free VRAM as configured totals minus what ``/api/ps`` says Ollama's models hold.

    For a governor that does not run on the GPU host. Approximations, all on the generous side
    of "free": memory used by anything other than Ollama's models is invisible; Ollama's own
    per-GPU overhead is not counted; and with several GPUs ``/api/ps`` gives one ``size_vram``
    per model, not per GPU, so the sum is subtracted from the GPUs in order, filling the first one
    before the next (Ollama packs a model onto as few GPUs as it can). The summed free memory is
    right; which GPU holds it may not be. Utilization is unknown.
    """

    name = "ollama"

    def __init__(self, upstream_getter: UpstreamGetter, vram_total_bytes: Sequence[int]) -> None:
        if not vram_total_bytes or any(total <= 0 for total in vram_total_bytes):
            raise ValueError("vram_total_bytes needs one positive size per GPU")
        self.upstream_getter = upstream_getter
        self.vram_total_bytes = tuple(vram_total_bytes)
        self._failures = _FailureLog(self.name)

    async def read(self) -> GpuSnapshot:
        try:
            answer = await self.upstream_getter().get_json("/api/ps", timeout_s=PS_TIMEOUT_S)
            used_bytes = _sum_size_vram(answer)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            error = f"GET /api/ps from Ollama failed: {_describe(exc)}"
            self._failures.failed(error)
            return GpuSnapshot(source=self.name, error=error)
        self._failures.succeeded()
        return GpuSnapshot(source=self.name, devices=self._spread(used_bytes))

    async def close(self) -> None:
        return None

    def _spread(self, used_bytes: int) -> tuple[GpuDevice, ...]:
        devices = []
        left_bytes = used_bytes
        for index, total_bytes in enumerate(self.vram_total_bytes):
            on_this_bytes = min(left_bytes, total_bytes)
            left_bytes -= on_this_bytes
            devices.append(
                GpuDevice(
                    index=index,
                    name=f"GPU {index} ({format_bytes(total_bytes)} configured)",
                    total_bytes=total_bytes,
                    free_bytes=total_bytes - on_this_bytes,
                    used_bytes=on_this_bytes,
                )
            )
        return tuple(devices)


def _sum_size_vram(answer: object) -> int:
    """Bytes of VRAM held by every loaded model; ValueError when the answer is not ``/api/ps``'s."""
    models = answer.get("models") if isinstance(answer, dict) else None
    if not isinstance(models, list):
        raise ValueError("the answer has no 'models' list")
    total_bytes = 0
    for model in models:
        size_vram = model.get("size_vram", 0) if isinstance(model, dict) else None
        if isinstance(size_vram, bool) or not isinstance(size_vram, int) or size_vram < 0:
            raise ValueError(f"a model has no valid 'size_vram': {size_vram!r}")
        total_bytes += size_vram
    return total_bytes


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}".strip()
    return str(exc) or type(exc).__name__


class NoGpuSource:
    """GPU state is always unknown, so policies leave ``num_ctx`` alone."""

    name = "none"

    def __init__(self, reason: str = "no GPU source configured") -> None:
        self.reason = reason

    async def read(self) -> GpuSnapshot:
        return GpuSnapshot(source=self.name, error=self.reason)

    async def close(self) -> None:
        return None


class AutoSource:
    """NVML when it initialises on the first read, else ``none``; the choice is final and logged.

    Why decide on the first read rather than at construction: initialising NVML blocks, and
    ``build_source`` may run on the event loop. Why final: a host without a GPU should not retry
    NVML twice a second forever; configure ``source = "nvml"`` to keep retrying instead.
    """

    def __init__(self, nvml_source: NvmlSource) -> None:
        self.nvml_source = nvml_source
        self.chosen: GpuSource | None = None

    @property
    def name(self) -> str:
        return "auto" if self.chosen is None else self.chosen.name

    async def read(self) -> GpuSnapshot:
        if self.chosen is None:
            try:
                await asyncio.to_thread(self.nvml_source.open_blocking)
            except _Unavailable as exc:
                self.chosen = NoGpuSource(f"source auto found no GPU: {exc}")
                log.info("gpu_source_chosen", source="none", reason=str(exc))
            else:
                self.chosen = self.nvml_source
                log.info("gpu_source_chosen", source="nvml")
        return await self.chosen.read()

    async def close(self) -> None:
        await self.nvml_source.close()


class GpuSampler:
    """Keeps the latest ``GpuSnapshot``, read every ``interval_s`` by a background task.

    ``reserve_bytes`` (kept free for the desktop, CUDA context growth...) is stamped on every
    snapshot so policies subtract it. A read that raises (a source bug; sources report failures
    as snapshots) is logged once per streak and published as an unknown snapshot: stale numbers
    are wrong numbers for a fit decision. For the same reason ``snapshot`` turns unknown when no
    read completed for ``stale_after_s`` (a hung NVML or Ollama), default ``max(5 s, 10 intervals)``.
    """

    def __init__(
        self,
        source: GpuSource,
        interval_s: float = DEFAULT_INTERVAL_S,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        stale_after_s: float | None = None,
    ) -> None:
        if interval_s <= 0 or reserve_bytes < 0:
            raise ValueError("interval_s must be > 0 and reserve_bytes >= 0")
        self.source = source
        self.interval_s = interval_s
        self.reserve_bytes = reserve_bytes
        self.stale_after_s = max(5.0, 10 * interval_s) if stale_after_s is None else stale_after_s
        self._snapshot = GpuSnapshot(source=source.name, error="not sampled yet", reserve_bytes=reserve_bytes)
        self._read_monotonic_s: float | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._read_failing = False

    @property
    def snapshot(self) -> GpuSnapshot:
        """The latest sample; never reads the source, so the request path never waits."""
        snapshot = self._snapshot
        if self._read_monotonic_s is not None and snapshot.known:
            age_s = time.monotonic() - self._read_monotonic_s
            if age_s > self.stale_after_s:
                error = f"GPU sample is stale: last read {age_s:.1f} s ago"
                return replace(snapshot, devices=(), error=error)
        return snapshot

    async def refresh(self) -> GpuSnapshot:
        """Read now (after a model load, say) and return the new snapshot.

        Reads are serialised: a caller arriving during a background read waits for it and then
        reads again, so what it gets was read after it asked.
        """
        async with self._lock:
            try:
                snapshot = await self.source.read()
            except Exception as exc:
                if not self._read_failing:
                    log.error("gpu_read_failed", source=self.source.name, error=repr(exc), exc_info=True)
                self._read_failing = True
                error = f"{self.source.name} read failed: {exc!r}"
                snapshot = GpuSnapshot(source=self.source.name, error=error)
            else:
                if self._read_failing:
                    log.info("gpu_recovered", source=self.source.name)
                self._read_failing = False
            self._snapshot = replace(snapshot, taken_at=time.time(), reserve_bytes=self.reserve_bytes)
            self._read_monotonic_s = time.monotonic()
            return self._snapshot

    async def run(self) -> None:
        """Read, sleep ``interval_s``, repeat until cancelled (a slow read delays the next one)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    def start(self) -> asyncio.Task[None]:
        """Start ``run`` in the background (idempotent); pair with ``stop`` in ``cleanup_ctx``."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="gpu-sampler")
        return self._task

    async def stop(self) -> None:
        """Cancel the background task, wait for it, then close the source."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.source.close()


@dataclass(frozen=True, slots=True)
class GpuSettings:
    """The ``[gpu]`` config section.

    TOML keys: ``source``, ``devices``, ``vram_total``, ``reserve``, ``interval``.
    """

    source: SourceName = "auto"
    devices: tuple[str, ...] | None = None
    """NVML indexes or UUIDs (``CUDA_VISIBLE_DEVICES`` style); None means every GPU."""
    vram_total_bytes: tuple[int, ...] = ()
    """One total per GPU; only for ``source = "ollama"``."""
    reserve_bytes: int = DEFAULT_RESERVE_BYTES
    interval_s: float = DEFAULT_INTERVAL_S


def _as_devices(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[object] = [part.strip() for part in value.split(",")]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise TypeError(f'expected a list such as [0, 1] or a string such as "0,1", got {_kind(value)}')
    if not items or items == [""]:
        raise ValueError("expected at least one GPU; leave devices out to use every GPU")
    devices: list[str] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            device = str(item)
        elif isinstance(item, str) and (item.strip().isdigit() or item.strip().startswith(("GPU-", "MIG-"))):
            device = item.strip()
        else:
            raise ValueError(
                f'expected GPU indexes such as 0 or UUIDs such as "GPU-8f6c...", got {item!r}'
            )
        if device in devices:
            raise ValueError(f"GPU {device!r} is listed twice")
        devices.append(device)
    return tuple(devices)


def _as_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f'expected a size such as "24GiB" or a number of bytes, got {_kind(value)}')
    return parse_size(value)


def _as_vram_totals(value: object) -> tuple[int, ...]:
    totals = tuple(_as_size(item) for item in value) if isinstance(value, list) else (_as_size(value),)
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


def parse_gpu_section(table: _Table) -> GpuSettings:
    """Validate ``[gpu]``; each mistake is one ``ConfigError`` naming the file, key and fix."""
    source = cast(SourceName, table.get("source", one_of("auto", "nvml", "ollama", "none"), "auto"))
    devices_given = "devices" in table.data
    devices = table.get("devices", _as_devices, None)
    totals_given = "vram_total" in table.data
    no_totals: tuple[int, ...] = ()
    vram_total_bytes = table.get("vram_total", _as_vram_totals, no_totals)
    settings = GpuSettings(
        source=source,
        devices=devices,
        vram_total_bytes=vram_total_bytes,
        reserve_bytes=table.get("reserve", _as_size, DEFAULT_RESERVE_BYTES),
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


def build_source(
    settings: GpuSettings, upstream_getter: UpstreamGetter, *, nvml: ModuleType | None = None
) -> GpuSource:
    """The source ``settings`` ask for; nothing is opened until the first read."""
    if settings.source == "ollama":
        return OllamaPsSource(upstream_getter, settings.vram_total_bytes)
    if settings.source == "none":
        return NoGpuSource()
    nvml_source = NvmlSource(settings.devices, nvml=nvml)
    return nvml_source if settings.source == "nvml" else AutoSource(nvml_source)


def build_sampler(settings: GpuSettings, upstream_getter: UpstreamGetter) -> GpuSampler:
    """A sampler over ``build_source(settings)`` with the configured interval and reserve."""
    return GpuSampler(
        build_source(settings, upstream_getter),
        interval_s=settings.interval_s,
        reserve_bytes=settings.reserve_bytes,
    )
