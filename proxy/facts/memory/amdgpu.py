"""AMD GPUs on Linux, from the amdgpu driver's sysfs counters: no ROCm library, no extra dependency.

Each card is ``<root>/sys/class/drm/cardN/device`` with PCI ``vendor`` 0x1002 and byte counters
``mem_info_vram_total`` and ``mem_info_vram_used``: the files Ollama reads for ROCm GPUs
(ollama ``discover/amd_linux.go``, ``DRMTotalMemoryFile`` / ``DRMUsedMemoryFile``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path

from policies.context import GpuDevice, GpuSnapshot
from policies.memory import GIB
from proxy.facts.memory.source import FailureLog, Unavailable

AMD_VENDOR = "0x1002"
IGPU_VRAM_BYTES = GIB
"""Cards with less VRAM than this are integrated Radeons (they report a 512 MiB carve-out);
Ollama skips them (``IGPUMemLimit``), so they are left out unless selected by number."""

_CARD = re.compile(r"card(\d+)")
"""``card1``, not ``card1-DP-2`` (a connector), ``renderD128`` or ``version``."""


class AmdgpuSource:
    """Per-card total/free/used VRAM (and busy %, when the driver has it) from amdgpu's sysfs files.

    ``devices`` selects cards by DRM number (``1`` is ``/sys/class/drm/card1``); ``None`` is every
    amdgpu card with at least 1 GiB of VRAM. The DRM number is not always the index
    ``HIP_VISIBLE_DEVICES`` uses (an iGPU or another vendor's card may come first), so check
    ``ollama-governor check`` when selecting. ``root`` is where sysfs is mounted (``/``; a
    container may bind the host's at ``/host``).

    Cards are listed again on every read (a directory listing), so a card that appears or goes
    is seen without a restart. Files are read in a worker thread. A file that cannot be read, or
    does not hold a number, fails the whole read, naming the card and the file, rather than
    giving a smaller sum: a card Ollama may use would be missing from the budget.
    """

    name = "amdgpu"

    def __init__(self, devices: Sequence[int | str] | None = None, root: str | Path = "/") -> None:
        self.devices: tuple[int, ...] | None = (
            None if devices is None else tuple(card_number(d) for d in devices)
        )
        self.drm_dir = Path(root) / "sys" / "class" / "drm"
        self._failures = FailureLog(self.name)

    async def read(self) -> GpuSnapshot:
        return await asyncio.to_thread(self.read_blocking)

    async def probe(self) -> None:
        """Raise ``Unavailable`` unless the selected amdgpu cards read; logs nothing."""
        await asyncio.to_thread(self.measure_blocking)

    async def close(self) -> None:
        """Nothing is held open between reads."""
        return None

    def read_blocking(self) -> GpuSnapshot:
        """One read of every selected card; blocks on sysfs, so call it off the event loop."""
        try:
            devices = self.measure_blocking()
        except Unavailable as exc:
            self._failures.failed(str(exc))
            return GpuSnapshot(source=self.name, kind="gpu", error=str(exc))
        self._failures.succeeded()
        return GpuSnapshot(source=self.name, kind="gpu", devices=devices)

    def measure_blocking(self) -> tuple[GpuDevice, ...]:
        """The selected cards, read now; raises ``Unavailable`` with the reason."""
        cards = self._cards()
        if not cards:
            raise Unavailable(f"no amdgpu card (PCI vendor {AMD_VENDOR}) in {self.drm_dir}")
        if self.devices is not None:
            return tuple(_read_card(number, self._selected(cards, number)) for number in self.devices)
        devices = tuple(_read_card(number, device) for number, device in cards.items())
        discrete = tuple(device for device in devices if device.total_bytes >= IGPU_VRAM_BYTES)
        if not discrete:
            listed = ", ".join(f"card{device.index}" for device in devices)
            raise Unavailable(
                f"only integrated Radeon GPUs (under 1 GiB of VRAM) in {self.drm_dir}: {listed}; "
                "select one with devices = [N] to count it"
            )
        return discrete

    def _cards(self) -> dict[int, Path]:
        """amdgpu cards by DRM number, in order: ``cardN`` entries whose PCI vendor is AMD."""
        try:
            entries = list(self.drm_dir.iterdir())
        except OSError as exc:
            raise Unavailable(f"no amdgpu sysfs: cannot list {self.drm_dir}: {_why(exc)}") from None
        cards: dict[int, Path] = {}
        for entry in entries:
            match = _CARD.fullmatch(entry.name)
            if match is None:
                continue
            device = entry / "device"
            try:
                vendor = (device / "vendor").read_text().strip().lower()
            except OSError:
                continue  # no PCI vendor (a virtual display): not a card Ollama can use
            if vendor == AMD_VENDOR:
                cards[int(match[1])] = device
        return dict(sorted(cards.items()))

    def _selected(self, cards: dict[int, Path], number: int) -> Path:
        if number not in cards:
            present = ", ".join(f"card{n}" for n in cards)
            raise Unavailable(f"amdgpu card{number} is not present: {self.drm_dir} has {present}")
        return cards[number]


def card_number(device: int | str) -> int:
    """A card's DRM number from a ``devices`` entry (``1`` or ``"1"``); ValueError for a UUID."""
    if isinstance(device, int) and device >= 0:
        return device
    text = str(device).strip()
    if not text.isdigit():
        raise ValueError(f"amdgpu cards are selected by number (1 for card1), got {device!r}")
    return int(text)


def _read_card(number: int, device: Path) -> GpuDevice:
    total_bytes = _read_counter(number, device / "mem_info_vram_total")
    used_bytes = _read_counter(number, device / "mem_info_vram_used")
    return GpuDevice(
        index=number,
        name=_product_name(device) or f"AMD GPU (card{number})",
        total_bytes=total_bytes,
        free_bytes=max(total_bytes - used_bytes, 0),
        used_bytes=used_bytes,
        utilization_pct=_busy_pct(device),
    )


def _read_counter(number: int, path: Path) -> int:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise Unavailable(f"amdgpu card{number}: cannot read {path}: {_why(exc)}") from None
    if not text.isdigit():
        raise Unavailable(f"amdgpu card{number}: {path} holds {text[:40]!r}, not a number of bytes")
    return int(text)


def _product_name(device: Path) -> str | None:
    """The board's name, where the driver exposes one (not every card has ``product_name``)."""
    try:
        return device.joinpath("product_name").read_text().strip() or None
    except OSError:
        return None


def _busy_pct(device: Path) -> int | None:
    """``gpu_busy_percent``, or None where the driver or the card does not report it."""
    try:
        text = device.joinpath("gpu_busy_percent").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
