"""``source = "auto"``: pick the first source that works on this host, once, and say which."""

from __future__ import annotations

import contextlib
from typing import Protocol

import structlog

from policies.context import GpuSnapshot
from proxy.facts.memory.amdgpu import AmdgpuSource
from proxy.facts.memory.apple import AppleSource
from proxy.facts.memory.meminfo import MeminfoSource
from proxy.facts.memory.none import NoGpuSource
from proxy.facts.memory.nvml import NvmlSource
from proxy.facts.memory.source import MemorySource, Unavailable

log = structlog.get_logger("ollama_governor.memory")


class ProbedSource(MemorySource, Protocol):
    """A source ``auto`` can try: ``probe`` says whether it works on this host."""

    async def probe(self) -> None:
        """Raise ``Unavailable`` with the reason when this source cannot read this host; log nothing."""
        ...


def host_order(
    platform: str,
    *,
    nvml: NvmlSource,
    amdgpu: AmdgpuSource | None,
    apple: AppleSource,
    system: MeminfoSource,
) -> tuple[ProbedSource, ...]:
    """The sources ``auto`` tries on ``platform`` (``sys.platform``), in order.

    1. NVML, when it initialises and sees at least one (selected) GPU;
    2. amdgpu, when sysfs shows an amdgpu card (Linux; ``None`` leaves it out, as when the
       ``devices`` selection names NVIDIA UUIDs);
    3. Apple Silicon unified memory, on macOS;
    4. system memory (``/proc/meminfo``), on Linux: a host with no GPU runs Ollama on the CPU.

    Anything else (Windows, BSD, an Intel Mac) ends at ``none``.
    """
    order: list[ProbedSource] = [nvml]
    if amdgpu is not None:
        order.append(amdgpu)
    if platform == "darwin":
        order.append(apple)
    if platform.startswith("linux"):
        order.append(system)
    return tuple(order)


class AutoSource:
    """The first of ``candidates`` whose probe passes on the first read, else ``none``; final and logged.

    Why decide on the first read rather than at construction: probes block (NVML's init, sysfs,
    sysctl), and ``build_source`` may run on the event loop. Why final: a host without a GPU
    should not retry NVML twice a second forever; configure a source by name to keep retrying
    it instead. A chosen source that fails later reads as unknown with its reason, as it would
    when configured by name; it is not swapped for the next one.

    CPU inference on a GPU host: auto keeps the GPU source even when Ollama runs some or all
    models on the CPU (``num_gpu`` 0, an unsupported GPU), because the GPU is what a fit
    decision is about there and a model in RAM is reported as spilled. System memory is chosen
    only where no GPU source works; on a GPU host where Ollama runs everything on the CPU,
    configure ``source = "system"``.
    """

    def __init__(self, *candidates: ProbedSource) -> None:
        self.candidates = candidates
        self.chosen: MemorySource | None = None
        self.skipped: tuple[str, ...] = ()
        """Why each candidate before the chosen one was passed over, in order."""

    @property
    def name(self) -> str:
        return "auto" if self.chosen is None else self.chosen.name

    async def read(self) -> GpuSnapshot:
        return await (await self.choose()).read()

    async def choose(self) -> MemorySource:
        """Probe the candidates in order (once, on the first call) and return the one chosen."""
        if self.chosen is not None:
            return self.chosen
        skipped: list[str] = []
        for candidate in self.candidates:
            try:
                await candidate.probe()
            except Unavailable as exc:
                skipped.append(str(exc))
            else:
                self.chosen, self.skipped = candidate, tuple(skipped)
                log.info("gpu_source_chosen", source=candidate.name, skipped=skipped)
                return candidate
        reason = "; ".join(skipped) or "no source to try on this platform"
        self.chosen, self.skipped = NoGpuSource(f"source auto found no GPU: {reason}"), tuple(skipped)
        log.info("gpu_source_chosen", source="none", reason=reason)
        return self.chosen

    async def close(self) -> None:
        """Close every candidate (only the chosen one holds anything, but a probe may have opened NVML)."""
        for candidate in self.candidates:
            with contextlib.suppress(Exception):
                await candidate.close()
