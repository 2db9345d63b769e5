"""Free memory Ollama can use, from whichever source this host has, sampled in the background."""

from __future__ import annotations

from types import ModuleType

from proxy.config.settings import GpuSettings
from proxy.facts.memory.auto import AutoSource
from proxy.facts.memory.none import NoGpuSource
from proxy.facts.memory.nvml import NvmlSource
from proxy.facts.memory.ollama_ps import HiddenBytes, OllamaPsSource, PsReader
from proxy.facts.memory.sampler import GpuSampler
from proxy.facts.memory.source import MemorySource

__all__ = [
    "AutoSource",
    "GpuSampler",
    "MemorySource",
    "NoGpuSource",
    "NvmlSource",
    "OllamaPsSource",
    "build_sampler",
    "build_source",
]


def build_source(
    settings: GpuSettings,
    read_ps: PsReader,
    *,
    hidden_bytes: HiddenBytes | None = None,
    nvml: ModuleType | None = None,
) -> MemorySource:
    """The source ``settings`` ask for; nothing is opened until the first read."""
    if settings.source == "ollama":
        if hidden_bytes is None:
            return OllamaPsSource(read_ps, settings.vram_total_bytes)
        return OllamaPsSource(read_ps, settings.vram_total_bytes, hidden_bytes)
    if settings.source == "none":
        return NoGpuSource()
    nvml_source = NvmlSource(settings.devices, nvml=nvml)
    return nvml_source if settings.source == "nvml" else AutoSource(nvml_source)


def build_sampler(settings: GpuSettings, source: MemorySource) -> GpuSampler:
    """A sampler over ``source`` with the configured interval and reserve."""
    return GpuSampler(source, interval_s=settings.interval_s, reserve_bytes=settings.reserve_bytes)
