"""``source = "auto"``: pick the first source that works on this host, once, and say which."""

from __future__ import annotations

import asyncio

import structlog

from policies.context import GpuSnapshot
from proxy.facts.memory.none import NoGpuSource
from proxy.facts.memory.nvml import NvmlSource
from proxy.facts.memory.source import MemorySource, Unavailable

log = structlog.get_logger("ollama_governor.memory")


class AutoSource:
    """NVML when it initialises on the first read, else ``none``; the choice is final and logged.

    Why decide on the first read rather than at construction: initialising NVML blocks, and
    ``build_source`` may run on the event loop. Why final: a host without a GPU should not retry
    NVML twice a second forever; configure ``source = "nvml"`` to keep retrying instead.
    """

    def __init__(self, nvml_source: NvmlSource) -> None:
        self.nvml_source = nvml_source
        self.chosen: MemorySource | None = None

    @property
    def name(self) -> str:
        return "auto" if self.chosen is None else self.chosen.name

    async def read(self) -> GpuSnapshot:
        if self.chosen is None:
            try:
                await asyncio.to_thread(self.nvml_source.open_blocking)
            except Unavailable as exc:
                self.chosen = NoGpuSource(f"source auto found no GPU: {exc}")
                log.info("gpu_source_chosen", source="none", reason=str(exc))
            else:
                self.chosen = self.nvml_source
                log.info("gpu_source_chosen", source="nvml")
        return await self.chosen.read()

    async def close(self) -> None:
        await self.nvml_source.close()
