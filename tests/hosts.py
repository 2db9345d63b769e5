"""Builders for the hosts the governor must handle, as plain files and values a test injects.

Why: the governor reads free memory from NVML, from amdgpu's sysfs files, from /proc/meminfo or
from macOS (sysctl and Metal); each reader is tested on data written here, never on the machine
the tests run on. NVIDIA is tests/fake_nvml.py (``nvidia_gpus`` builds its devices); a CPU-only
Ollama is the fake with ``vram_bytes=None`` (``cpu_only``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.fake_nvml import FakeGpu, FakeNvml

GiB = 1 << 30
MiB = 1 << 20
AMD_VENDOR = "0x1002"
NVIDIA_VENDOR = "0x10de"
INTEL_VENDOR = "0x8086"
Broken = Literal["missing", "directory", "garbage", "no_permission"]
"""How a card's memory files fail: absent, a directory (reading raises IsADirectoryError),
not a number, or mode 000 (only unreadable for a non-root user: tests run as root in CI)."""


@dataclass(frozen=True)
class DrmCard:
    """One /sys/class/drm/cardN: the PCI vendor and, for amdgpu, the VRAM counters in bytes."""

    vram_total_bytes: int = 24 * GiB
    vram_used_bytes: int = 1 * GiB
    vendor: str = AMD_VENDOR
    broken: Broken | None = None


def amd_sysfs(root: Path, cards: Sequence[DrmCard] = (DrmCard(),), *, connectors: bool = True) -> Path:
    """Write ``root``/sys/class/drm/card<N>/device/{vendor,mem_info_vram_total,mem_info_vram_used}.

    Returns the drm directory a reader is pointed at. With ``connectors`` the tree also holds
    what a real one does besides cards (card0-DP-1, renderD128, version), which readers skip.
    """
    drm = root / "sys" / "class" / "drm"
    drm.mkdir(parents=True, exist_ok=True)
    for n, card in enumerate(cards):
        device = drm / f"card{n}" / "device"
        device.mkdir(parents=True)
        (device / "vendor").write_text(f"{card.vendor}\n")
        if card.vendor != AMD_VENDOR:
            continue  # only amdgpu exposes mem_info_vram_*
        for name, value in (
            ("mem_info_vram_total", card.vram_total_bytes),
            ("mem_info_vram_used", card.vram_used_bytes),
        ):
            _write_counter(device / name, value, card.broken)
        if connectors:
            (drm / f"card{n}-DP-{n + 1}").mkdir()
    if connectors:
        (drm / "renderD128").mkdir(exist_ok=True)
        (drm / "version").write_text("drm 1.1.0 20060810\n")
    return drm


def _write_counter(path: Path, value: int, broken: Broken | None) -> None:
    if broken == "missing":
        return
    if broken == "directory":
        path.mkdir()
        return
    path.write_text("not a number\n" if broken == "garbage" else f"{value}\n")
    if broken == "no_permission":
        os.chmod(path, 0)


def meminfo(
    path: Path,
    *,
    total_kib: int = 32 * 1024 * 1024,
    free_kib: int = 4 * 1024 * 1024,
    available_kib: int | None = 20 * 1024 * 1024,
    buffers_kib: int = 512 * 1024,
    cached_kib: int = 12 * 1024 * 1024,
) -> Path:
    """A /proc/meminfo in the kernel's layout; ``available_kib=None`` leaves out MemAvailable
    (kernels before 3.14), so a reader must fall back to MemFree + Buffers + Cached."""
    rows = [("MemTotal", total_kib), ("MemFree", free_kib)]
    if available_kib is not None:
        rows.append(("MemAvailable", available_kib))
    rows += [
        ("Buffers", buffers_kib),
        ("Cached", cached_kib),
        ("SwapCached", 0),
        ("Active", cached_kib // 2),
        ("SwapTotal", 0),
        ("SwapFree", 0),
        ("HugePages_Total", 0),
        ("Hugepagesize", 2048),
    ]
    lines = [
        f"{name + ':':<16}{value:>8}" + ("" if name.startswith("HugePages") else " kB")
        for name, value in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class AppleSiliconHost:
    """A Mac with unified memory, as the values a reader is handed.

    Metal lets the GPU wire at most ``recommended_max_working_set_bytes``
    (MTLDevice.recommendedMaxWorkingSetSize) unless ``sysctl iogpu.wired_limit_mb`` raises or
    lowers it (0 = the default). ``available_bytes`` is what the OS could hand out now.
    """

    total_ram_bytes: int
    recommended_max_working_set_bytes: int
    wired_limit_mb: int
    available_bytes: int
    chip: str = "Apple M2 Max"

    @property
    def gpu_limit_bytes(self) -> int:
        """The most the GPU may use: the wired limit when set, else Metal's recommendation."""
        return (
            self.wired_limit_mb * MiB if self.wired_limit_mb > 0 else self.recommended_max_working_set_bytes
        )

    @property
    def sysctl(self) -> dict[str, str]:
        """What ``sysctl -n NAME`` prints for the names a reader asks."""
        return {
            "hw.memsize": str(self.total_ram_bytes),
            "iogpu.wired_limit_mb": str(self.wired_limit_mb),
            "machdep.cpu.brand_string": self.chip,
        }


def apple_silicon(
    *, total_gib: int = 64, wired_limit_mb: int = 0, available_gib: float = 40.0, chip: str = "Apple M2 Max"
) -> AppleSiliconHost:
    """A Mac: Metal's default working set is about 2/3 of RAM up to 36 GiB, 3/4 above."""
    total = total_gib * GiB
    recommended = total * 2 // 3 if total_gib <= 36 else total * 3 // 4
    return AppleSiliconHost(total, recommended, wired_limit_mb, round(available_gib * GiB), chip)


def nvidia_gpus(*sizes: tuple[float, float]) -> FakeNvml:
    """A fake pynvml with one GPU per (total GiB, used GiB)."""
    gpus = [
        FakeGpu(f"GPU-{i:04d}-fake", "NVIDIA GeForce RTX 4090", round(total * GiB), round(used * GiB))
        for i, (total, used) in enumerate(sizes)
    ]
    return FakeNvml(gpus)


def cpu_only(**options: Any) -> dict[str, Any]:
    """Options for ``start_fake``/FakeOllama on a host without a GPU: every size_vram is 0."""
    return {"version": "0.33.0-rc2", **options, "vram_bytes": None}
