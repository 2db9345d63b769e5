"""What a memory source is: one reader of the free memory Ollama can use, never raising.

A source reads the GPUs (or the unified or system memory) Ollama runs models in. Failures are
snapshots with an ``error``, logged once per streak by ``FailureLog``: a sampler reads twice a
second, and a missing driver must cost one log line, not 7200 an hour.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from policies.context import GpuSnapshot

log = structlog.get_logger("ollama_governor.memory")


class MemorySource(Protocol):
    """Where free-memory numbers come from. ``read`` never raises; failures are snapshots with ``error``."""

    @property
    def name(self) -> str:
        """The source's name (``nvml``, ``amdgpu``, ``apple``, ``system``, ``ollama``, ``none``; ``auto``
        until it has chosen, then the chosen one's): copied into ``GpuSnapshot.source``."""
        ...

    async def read(self) -> GpuSnapshot:
        """The memory as of now, with its ``kind`` (``taken_at`` and ``reserve_bytes`` are the
        sampler's to set)."""
        ...

    async def close(self) -> None:
        """Release what ``read`` acquired (NVML's handle); the source may be read again later."""
        ...


class FailureLog:
    """Logs ``gpu_unavailable`` on the first failure of a streak and ``gpu_recovered`` after it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.failing: str | None = None

    def failed(self, error: str) -> None:
        """Note a failed read; logged only when the streak starts."""
        if self.failing is None:
            log.warning("gpu_unavailable", source=self.source, error=error)
        self.failing = error

    def succeeded(self) -> None:
        """Note a good read; logged only when it ends a streak."""
        if self.failing is not None:
            log.info("gpu_recovered", source=self.source, was=self.failing)
        self.failing = None


class Unavailable(Exception):
    """A source cannot be used on this host; the message is the snapshot's ``error``."""
