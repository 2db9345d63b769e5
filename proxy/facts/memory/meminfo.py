"""System memory for CPU-only inference on Linux: ``MemAvailable`` from ``/proc/meminfo``.

This is the figure Ollama itself schedules CPU models with (ollama ``discover/cpu_linux.go``
``getCPUMem``): ``MemAvailable``, or ``MemFree + Buffers + Cached`` on kernels before 3.14 that
lack it. The governor does the same, so it budgets with what Ollama will see.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import structlog

from policies.context import GpuDevice, GpuSnapshot
from proxy.facts.memory.source import FailureLog, Unavailable

log = structlog.get_logger("ollama_governor.memory")

KIB = 1024
"""``/proc/meminfo`` says ``kB`` and means KiB."""
ESTIMATED = "no MemAvailable: estimated as MemFree + Buffers + Cached"


@dataclass(frozen=True, slots=True)
class Meminfo:
    """The lines of ``/proc/meminfo`` the budget needs, in bytes."""

    total_bytes: int
    available_bytes: int
    estimated: bool = False
    """True when ``MemAvailable`` was missing and ``MemFree + Buffers + Cached`` stood in."""


def parse_meminfo(text: str) -> Meminfo:
    """``/proc/meminfo``'s text as a ``Meminfo``; ValueError saying which line is missing or bad."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        if not parts[0].isdigit():
            raise ValueError(f"{name}: {rest.strip()[:40]!r} is not a number")
        scale = KIB if parts[1:] == ["kB"] else 1  # HugePages_* are counts, not sizes
        fields[name.strip()] = int(parts[0]) * scale
    if "MemTotal" not in fields:
        raise ValueError("no MemTotal line")
    if "MemAvailable" in fields:
        return Meminfo(fields["MemTotal"], fields["MemAvailable"])
    missing = [name for name in ("MemFree", "Buffers", "Cached") if name not in fields]
    if missing:
        raise ValueError(f"no MemAvailable line, and no {', '.join(missing)} to estimate it from")
    estimate = fields["MemFree"] + fields["Buffers"] + fields["Cached"]
    return Meminfo(fields["MemTotal"], min(estimate, fields["MemTotal"]), estimated=True)


class MeminfoSource:
    """System RAM as one device: total ``MemTotal``, free ``MemAvailable``.

    For a host where Ollama runs models on the CPU. What it does not count, on purpose:

    * swap: ``MemAvailable`` excludes it, and a model that swaps is the CPU host's spill;
    * the weights of a loaded model that Ollama memory-mapped: they are page cache, which
      ``MemAvailable`` counts as reclaimable, so while a model is loaded the figure can be
      generous by part of its size (Ollama's own scheduler sees the same figure);
    * cgroup limits: Ollama also caps by ``/sys/fs/cgroup/memory.max`` when it runs in a
      container; the governor reads the host's ``/proc/meminfo`` (point ``meminfo_path`` at
      the container's view when they differ).

    A ``/proc/meminfo`` without ``MemAvailable`` (kernels before 3.14) is estimated as Ollama
    does, logged once (``memory_estimated``) and named in the device (``name``). The file is
    read in a worker thread; an unreadable or malformed file is an unknown snapshot, logged once.
    """

    name = "system"

    def __init__(self, path: str | Path = "/proc/meminfo") -> None:
        self.path = Path(path)
        self._failures = FailureLog(self.name)
        self._estimate_logged = False

    async def read(self) -> GpuSnapshot:
        return await asyncio.to_thread(self.read_blocking)

    async def probe(self) -> None:
        """Raise ``Unavailable`` unless the file reads and parses; logs nothing."""
        await asyncio.to_thread(self.measure_blocking)

    async def close(self) -> None:
        """Nothing is held open between reads."""
        return None

    def read_blocking(self) -> GpuSnapshot:
        """One read of the file; blocks, so call it off the event loop."""
        try:
            meminfo = self.measure_blocking()
        except Unavailable as exc:
            self._failures.failed(str(exc))
            return GpuSnapshot(source=self.name, kind="system", error=str(exc))
        self._failures.succeeded()
        if meminfo.estimated and not self._estimate_logged:
            log.warning("memory_estimated", source=self.name, path=str(self.path), reason=ESTIMATED)
            self._estimate_logged = True
        return GpuSnapshot(source=self.name, kind="system", devices=(self._device(meminfo),))

    def measure_blocking(self) -> Meminfo:
        """The file, read and parsed now; raises ``Unavailable`` with the reason."""
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise Unavailable(f"cannot read {self.path}: {exc.strerror or type(exc).__name__}") from None
        try:
            return parse_meminfo(text)
        except ValueError as exc:
            raise Unavailable(f"{self.path}: {exc}") from None

    @staticmethod
    def _device(meminfo: Meminfo) -> GpuDevice:
        return GpuDevice(
            index=0,
            name="system memory" + (f" ({ESTIMATED})" if meminfo.estimated else ""),
            total_bytes=meminfo.total_bytes,
            free_bytes=meminfo.available_bytes,
            used_bytes=meminfo.total_bytes - meminfo.available_bytes,
        )
