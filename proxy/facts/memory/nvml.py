"""NVIDIA GPUs through NVML (``pynvml`` from nvidia-ml-py): per-device total, free, used, utilization.

NVML calls block, so they always run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from policies.context import GpuDevice, GpuSnapshot
from proxy.facts.memory.source import FailureLog, Unavailable


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
        self._failures = FailureLog(self.name)

    async def read(self) -> GpuSnapshot:
        return await asyncio.to_thread(self.read_blocking)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_blocking)

    async def probe(self) -> None:
        """Raise ``Unavailable`` unless NVML initialises and finds the selected GPUs; logs nothing."""
        await asyncio.to_thread(self.open_blocking)

    def read_blocking(self) -> GpuSnapshot:
        """One read of every selected GPU; blocks for NVML, so call it off the event loop."""
        with self._lock:
            try:
                devices = self._read_devices()
            except Unavailable as exc:
                self._failures.failed(str(exc))
                return GpuSnapshot(source=self.name, kind="gpu", error=str(exc))
            self._failures.succeeded()
            return GpuSnapshot(source=self.name, kind="gpu", devices=devices)

    def open_blocking(self) -> None:
        """Initialise NVML and resolve the selected GPUs; raises ``Unavailable`` with the reason."""
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
                raise Unavailable(
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
            raise Unavailable(f"NVML unavailable: {exc}") from None
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
                        raise Unavailable(
                            f"GPU {key} is not present: NVML sees {count} GPU(s)"
                            + (f" (0-{count - 1})" if count else "")
                        )
                    handle, index = nvml.nvmlDeviceGetHandleByIndex(key), key
                else:
                    try:
                        handle = nvml.nvmlDeviceGetHandleByUUID(key)
                    except nvml.NVMLError as exc:
                        raise Unavailable(f"GPU {key!r} not found: {exc}") from None
                    index = int(nvml.nvmlDeviceGetIndex(handle))
                opened.append(_OpenDevice(index, _text(nvml.nvmlDeviceGetName(handle)), handle))
        except nvml.NVMLError as exc:
            raise Unavailable(f"NVML unavailable: {exc}") from None
        if not opened:
            raise Unavailable("NVML sees no GPUs")
        return tuple(opened)

    def _read_devices(self) -> tuple[GpuDevice, ...]:
        opened = self._ensure_open()
        nvml = self._nvml
        try:
            return tuple(self._read_one(nvml, device) for device in opened)
        except nvml.NVMLError as exc:
            # A lost GPU or a reloaded driver invalidates the handles: start over next time.
            self._shutdown()
            raise Unavailable(f"NVML read failed: {exc}") from None

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
