"""Free memory Ollama can use, from whichever source this host has, sampled in the background."""

from __future__ import annotations

import sys
from types import ModuleType

from proxy.config.settings import GpuSettings
from proxy.facts.memory.amdgpu import AmdgpuSource
from proxy.facts.memory.apple import AppleReaders, AppleSource
from proxy.facts.memory.auto import AutoSource, host_order
from proxy.facts.memory.meminfo import MeminfoSource
from proxy.facts.memory.none import NoGpuSource
from proxy.facts.memory.nvml import NvmlSource
from proxy.facts.memory.ollama_ps import HiddenBytes, OllamaPsSource, PsReader
from proxy.facts.memory.sampler import GpuSampler
from proxy.facts.memory.source import MemorySource

__all__ = [
    "AmdgpuSource",
    "AppleReaders",
    "AppleSource",
    "AutoSource",
    "GpuSampler",
    "MeminfoSource",
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
    apple: AppleReaders | None = None,
    platform: str = sys.platform,
) -> MemorySource:
    """The source ``settings`` ask for; nothing is opened or read until the first read.

    ``hidden_bytes`` estimates what ``/api/ps`` leaves out of a model's ``size_vram`` (the
    remote source adds it back); ``nvml`` (a pynvml module), ``apple`` (the Mac's readers) and
    ``platform`` (``sys.platform``, which decides ``auto``'s order) replace this machine's, so
    tests fake any host.
    """
    source = settings.source
    if source == "ollama":
        if hidden_bytes is None:
            return OllamaPsSource(read_ps, settings.vram_total_bytes)
        return OllamaPsSource(read_ps, settings.vram_total_bytes, hidden_bytes)
    if source == "none":
        return NoGpuSource()
    if source == "nvml":
        return NvmlSource(settings.devices, nvml=nvml)
    if source == "amdgpu":
        return AmdgpuSource(settings.devices, root=settings.sysfs_root)
    if source == "apple":
        return AppleSource(read_ps, apple, hidden_bytes)
    if source == "system":
        return MeminfoSource(settings.meminfo_path)
    cards = settings.devices is None or all(device.isdigit() for device in settings.devices)
    return AutoSource(
        *host_order(
            platform,
            nvml=NvmlSource(settings.devices, nvml=nvml),
            amdgpu=AmdgpuSource(settings.devices, root=settings.sysfs_root) if cards else None,
            apple=AppleSource(read_ps, apple, hidden_bytes),
            system=MeminfoSource(settings.meminfo_path),
        )
    )


def build_sampler(settings: GpuSettings, source: MemorySource) -> GpuSampler:
    """A sampler over ``source`` with the configured interval and reserve."""
    return GpuSampler(source, interval_s=settings.interval_s, reserve_bytes=settings.reserve_bytes)
