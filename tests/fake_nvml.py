"""A fake of the slice of pynvml the governor uses, injected instead of the real module.

NVML is faked by injection, never by skipping the code path: NvmlSource runs unchanged.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from policies.memory import GIB


class FakeNVMLError(Exception):
    """Like pynvml.NVMLError: str() is NVML's error string."""


class FakeLibraryNotFound(FakeNVMLError):
    def __init__(self) -> None:
        super().__init__("NVML Shared Library Not Found")


@dataclass
class FakeGpu:
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int
    utilization_pct: int | None = 0
    used_by: Callable[[], int] | None = None
    """When set, memory use is read from it at each call (e.g. a fake Ollama's loaded models)."""


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu("GPU-aaaa-0000", "NVIDIA GeForce RTX 4090", 24 * GIB, 2 * GIB, utilization_pct=37),
        FakeGpu("GPU-bbbb-1111", "NVIDIA RTX A4000", 16 * GIB, 1 * GIB, utilization_pct=None),
    ]


class FakeNvml(types.ModuleType):
    """The slice of pynvml that NvmlSource uses; records calls and the threads they ran on."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[FakeGpu] | None = None) -> None:
        super().__init__("fake_pynvml")
        self.gpus = two_gpus() if gpus is None else gpus
        self.init_error: Exception | None = None
        self.read_error: Exception | None = None
        self.inits = 0
        self.shutdowns = 0
        self.calls = 0
        self.threads: set[int] = set()

    def _call(self) -> None:
        self.calls += 1
        self.threads.add(threading.get_ident())

    def nvmlInit(self) -> None:
        self._call()
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self._call()
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        self._call()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._call()
        if not 0 <= index < len(self.gpus):
            raise FakeNVMLError("Invalid Argument")
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        self._call()
        for index, gpu in enumerate(self.gpus):
            if gpu.uuid == uuid:
                return index
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        self._call()
        return handle

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        self._call()
        return self.gpus[handle].name.encode()  # old pynvml returns bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        self._call()
        if self.read_error is not None:
            raise self.read_error
        gpu = self.gpus[handle]
        used_bytes = gpu.used_by() if gpu.used_by is not None else gpu.used_bytes
        return types.SimpleNamespace(
            total=gpu.total_bytes, used=used_bytes, free=gpu.total_bytes - used_bytes
        )

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        self._call()
        utilization_pct = self.gpus[handle].utilization_pct
        if utilization_pct is None:
            raise FakeNVMLError("Not Supported")
        return types.SimpleNamespace(gpu=utilization_pct, memory=0)


class _FreeVram(Protocol):
    vram_bytes: int | None

    def free_vram_bytes(self) -> int | None: ...


def following(fake: _FreeVram, name: str = "NVIDIA GeForce RTX 4090") -> FakeNvml:
    """One GPU of the fake Ollama's simulated size whose used memory is what its runners really
    hold (their true footprint, not what ``/api/ps`` reports)."""
    total = fake.vram_bytes or 0

    def used_bytes() -> int:
        free = fake.free_vram_bytes()
        return total - (total if free is None else free)

    return FakeNvml([FakeGpu("GPU-0000", name, total, 0, used_by=used_bytes)])
