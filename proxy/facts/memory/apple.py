"""Apple Silicon's unified memory: how much of it the GPU may still take for Ollama's models.

Untested on a real Mac: written against injected readers and tested with tests/hosts.py
``apple_silicon(...)``. What it follows:

* The GPU limit is Metal's ``recommendedMaxWorkingSetSize``, the total llama.cpp's Metal backend
  reports for the device (``ggml_metal_device_get_memory``: total = that, free = total minus the
  process's own ``currentAllocatedSize``) and the total Ollama used for Metal
  (ollama ``discover/gpu_darwin.go``, ``getRecommendedMaxVRAM``). It follows a raised or lowered
  ``sudo sysctl iogpu.wired_limit_mb`` (measured in llmfit PR #754 and antirez/ds4 #893).
  Read through PyObjC (``pip install pyobjc-framework-Metal``) when installed; without it the
  limit is ``iogpu.wired_limit_mb`` when set, else Metal's default estimated as 2/3 of RAM up to
  36 GiB and 3/4 above (the commonly quoted figures; one 128 GiB Mac on macOS 26 measured 84%,
  so the estimate errs low there).
* Available memory is free + inactive + speculative pages from ``vm_stat``: Ollama's own
  figure for a Mac (ollama ``discover/cpu_info_darwin.m``, ``getFreeMemory``).
* What Ollama's models hold is ``/api/ps``'s ``size_vram`` summed, since the Metal allocation
  that counts is the runner's, not this process's.

The budget is ``min(GPU limit - what Ollama's models hold, available memory)``.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from policies.context import GpuDevice, GpuSnapshot
from policies.memory import GIB, MIB
from proxy.facts.memory.ollama_ps import HiddenBytes, PsReader, describe_failure, sum_size_vram
from proxy.facts.memory.source import FailureLog, Unavailable

READ_TIMEOUT_S = 2.0
SysctlReader = Callable[[str], str | None]
"""``sysctl -n NAME``'s output, or None when this macOS has no such name; raises when sysctl
cannot run."""
VmStatReader = Callable[[], str]
"""``vm_stat``'s output."""
WorkingSetReader = Callable[[], int | None]
"""Metal's ``recommendedMaxWorkingSetSize`` in bytes, or None when Metal cannot be asked."""

_PAGE_SIZE = re.compile(r"page size of (\d+) bytes")
_PAGES = re.compile(r"^Pages ([a-z ]+):\s+(\d+)\.?$", re.MULTILINE)


def run_sysctl(name: str) -> str | None:
    """``/usr/sbin/sysctl -n NAME``: its output, or None when the name is unknown."""
    done = subprocess.run(
        ["/usr/sbin/sysctl", "-n", name], capture_output=True, text=True, timeout=READ_TIMEOUT_S, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def run_vm_stat() -> str:
    """``/usr/bin/vm_stat``'s output."""
    done = subprocess.run(
        ["/usr/bin/vm_stat"], capture_output=True, text=True, timeout=READ_TIMEOUT_S, check=True
    )
    return done.stdout


class MetalWorkingSet:
    """``MTLCreateSystemDefaultDevice().recommendedMaxWorkingSetSize`` through PyObjC, if installed."""

    def __init__(self) -> None:
        self._device: Any = None
        self._unavailable = False

    def __call__(self) -> int | None:
        if self._unavailable:
            return None
        if self._device is None:
            try:
                metal: Any = importlib.import_module("Metal")
            except ImportError:
                self._unavailable = True
                return None
            self._device = metal.MTLCreateSystemDefaultDevice()
            if self._device is None:
                self._unavailable = True
                return None
        return int(self._device.recommendedMaxWorkingSetSize())


@dataclass(frozen=True, slots=True)
class AppleReaders:
    """How the Mac is asked; tests inject each."""

    sysctl: SysctlReader = run_sysctl
    vm_stat: VmStatReader = run_vm_stat
    working_set: WorkingSetReader = field(default_factory=MetalWorkingSet)


@dataclass(frozen=True, slots=True)
class UnifiedMemory:
    """One reading of the Mac, before Ollama's models are subtracted."""

    chip: str
    total_ram_bytes: int
    gpu_limit_bytes: int
    limit_from: str
    """Where the limit came from: ``Metal``, ``iogpu.wired_limit_mb`` or ``estimated``."""
    available_bytes: int


def default_working_set_bytes(total_ram_bytes: int) -> int:
    """Metal's default GPU working set, as commonly quoted: 2/3 of RAM up to 36 GiB, 3/4 above."""
    return total_ram_bytes * 2 // 3 if total_ram_bytes <= 36 * GIB else total_ram_bytes * 3 // 4


def parse_vm_stat(text: str) -> int:
    """Bytes free + inactive + speculative from ``vm_stat``'s output; ValueError when it is not that."""
    page = _PAGE_SIZE.search(text)
    if page is None:
        raise ValueError("vm_stat printed no page size")
    pages = {name: int(count) for name, count in _PAGES.findall(text)}
    missing = [name for name in ("free", "inactive") if name not in pages]
    if missing:
        raise ValueError(f"vm_stat printed no 'Pages {missing[0]}' line")
    return (pages["free"] + pages["inactive"] + pages.get("speculative", 0)) * int(page[1])


class AppleSource:
    """Apple Silicon unified memory as one device: total = the GPU limit, free = the budget.

    ``read_ps`` returns Ollama's latest ``/api/ps`` answer (the facts poller's), as for the
    ``ollama`` source; while it fails the snapshot is unknown, since without it the budget would
    count what Ollama's models already hold as free. Readers run in a worker thread, each
    bounded by ``READ_TIMEOUT_S``.
    """

    name = "apple"

    def __init__(
        self, read_ps: PsReader, readers: AppleReaders | None = None, hidden_bytes: HiddenBytes | None = None
    ) -> None:
        self.read_ps = read_ps
        self.hidden_bytes = hidden_bytes
        self.readers = AppleReaders() if readers is None else readers
        self._failures = FailureLog(self.name)

    async def read(self) -> GpuSnapshot:
        try:
            memory = await asyncio.to_thread(self.measure_blocking)
            held_bytes = await self._held_bytes()
        except Unavailable as exc:
            self._failures.failed(str(exc))
            return GpuSnapshot(source=self.name, kind="unified", error=str(exc))
        self._failures.succeeded()
        free_bytes = max(min(memory.gpu_limit_bytes - held_bytes, memory.available_bytes), 0)
        device = GpuDevice(
            index=0,
            name=f"{memory.chip} (unified memory, GPU limit: {memory.limit_from})",
            total_bytes=memory.gpu_limit_bytes,
            free_bytes=free_bytes,
            used_bytes=memory.gpu_limit_bytes - free_bytes,
        )
        return GpuSnapshot(source=self.name, kind="unified", devices=(device,))

    async def probe(self) -> None:
        """Raise ``Unavailable`` unless this is an Apple Silicon Mac that answers; logs nothing.

        ``/api/ps`` is not asked: Ollama being down must not decide what kind of host this is.
        """
        await asyncio.to_thread(self.measure_blocking)

    async def close(self) -> None:
        """Nothing is held open (the Metal device is a reference, released with this source)."""
        return None

    def measure_blocking(self) -> UnifiedMemory:
        """Ask the Mac now; raises ``Unavailable`` with the reason."""
        chip = self._sysctl("machdep.cpu.brand_string")
        if chip is None or not chip.startswith("Apple"):
            # Ollama runs on the CPU on Intel Macs (ollama discover/gpu_darwin.go, GOARCH amd64).
            raise Unavailable(f"not Apple Silicon: the CPU is {chip or 'unknown'}")
        total_text = self._sysctl("hw.memsize")
        if total_text is None or not total_text.isdigit():
            raise Unavailable(f"sysctl hw.memsize gave {total_text!r}, not a number of bytes")
        total_ram_bytes = int(total_text)
        limit_bytes, limit_from = self._gpu_limit(total_ram_bytes)
        try:
            available_bytes = parse_vm_stat(self.readers.vm_stat())
        except Exception as exc:
            raise Unavailable(f"vm_stat failed: {_why(exc)}") from None
        return UnifiedMemory(chip, total_ram_bytes, limit_bytes, limit_from, available_bytes)

    def _gpu_limit(self, total_ram_bytes: int) -> tuple[int, str]:
        try:
            metal_bytes = self.readers.working_set()
        except Exception:
            metal_bytes = None  # PyObjC present but Metal refused: fall back to sysctl
        if metal_bytes:
            return metal_bytes, "Metal"
        wired_text = self._sysctl("iogpu.wired_limit_mb") or "0"  # None: macOS before 14
        if not wired_text.isdigit():
            raise Unavailable(f"sysctl iogpu.wired_limit_mb gave {wired_text!r}, not a number")
        if int(wired_text) > 0:
            return min(int(wired_text) * MIB, total_ram_bytes), "iogpu.wired_limit_mb"
        return default_working_set_bytes(total_ram_bytes), "estimated"

    def _sysctl(self, name: str) -> str | None:
        try:
            return self.readers.sysctl(name)
        except Exception as exc:
            raise Unavailable(f"sysctl {name} failed: {_why(exc)}") from None

    async def _held_bytes(self) -> int:
        try:
            answer = await self.read_ps()
            return (
                sum_size_vram(answer)
                if self.hidden_bytes is None
                else sum_size_vram(answer, self.hidden_bytes)
            )
        except Exception as exc:
            raise Unavailable(
                f"GET /api/ps from Ollama failed: {describe_failure(exc)} (needed for what its models hold)"
            ) from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__
