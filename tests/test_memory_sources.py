"""Memory sources for every kind of host (amdgpu sysfs, Apple unified memory, /proc/meminfo), auto's
order, what ``check`` prints and what the status page shows; each host is a fixture of tests/hosts.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from policies.context import GpuDevice, GpuSnapshot
from policies.memory import GIB, MIB
from proxy.config.settings import GpuSettings
from proxy.facts.memory import (
    AmdgpuSource,
    AppleReaders,
    AppleSource,
    AutoSource,
    GpuSampler,
    MeminfoSource,
    NoGpuSource,
    NvmlSource,
    build_source,
)
from proxy.facts.memory.apple import default_working_set_bytes, parse_vm_stat
from proxy.facts.memory.meminfo import parse_meminfo
from proxy.facts.memory.probe import describe_reading, read_once
from proxy.keys import FACTS, MEMORY
from tests.conftest import StartFake, StartProxy, eventually
from tests.fake_nvml import FakeLibraryNotFound, FakeNvml
from tests.hosts import (
    NVIDIA_VENDOR,
    AppleSiliconHost,
    DrmCard,
    amd_sysfs,
    apple_silicon,
    cpu_only,
    meminfo,
    nvidia_gpus,
)

ROOT = Path(__file__).resolve().parent.parent
KIB = 1024


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def stub_ps(*size_vram: int) -> Callable[[], Any]:
    """A ``/api/ps`` reader answering with one loaded model per ``size_vram``."""

    async def read() -> Any:
        return {
            "models": [{"name": f"m{i}", "size": size, "size_vram": size} for i, size in enumerate(size_vram)]
        }

    return read


def failing_ps(error: Exception) -> Callable[[], Any]:
    async def read() -> Any:
        raise error

    return read


def vm_stat_text(available_bytes: int, page_size: int = 16384) -> str:
    """What ``vm_stat`` prints, with ``available_bytes`` split over free, inactive and speculative pages."""
    pages = available_bytes // page_size
    free, inactive = pages // 4, pages // 2
    rows = [
        ("free", free),
        ("active", 123456),
        ("inactive", inactive),
        ("speculative", pages - free - inactive),
        ("throttled", 0),
        ("wired down", 98765),
        ("purgeable", 4321),
    ]
    return (
        "\n".join(
            [
                f"Mach Virtual Memory Statistics: (page size of {page_size} bytes)",
                *(f"{'Pages ' + name + ':':<28}{count:>14}." for name, count in rows),
                '"Translation faults":                  1234567.',
            ]
        )
        + "\n"
    )


def mac_readers(mac: AppleSiliconHost, *, metal: bool = True, **overrides: Any) -> AppleReaders:
    """Readers answering as ``mac`` does; without ``metal`` PyObjC is missing."""
    readers = AppleReaders(
        sysctl=mac.sysctl.get,
        vm_stat=lambda: vm_stat_text(mac.available_bytes),
        working_set=lambda: mac.recommended_max_working_set_bytes if metal else None,
    )
    return replace(readers, **overrides)


def failing_nvml() -> FakeNvml:
    nvml = FakeNvml()
    nvml.init_error = FakeLibraryNotFound()
    return nvml


# ---------------------------------------------------------------------------- amdgpu


class TestAmdgpuSource:
    async def test_reads_every_amdgpu_card_and_skips_the_rest(self, tmp_path: Path) -> None:
        """amdgpu cards by DRM number; another vendor's card, connectors and renderD nodes are skipped."""
        amd_sysfs(tmp_path, [DrmCard(16 * GIB, 2 * GIB), DrmCard(vendor=NVIDIA_VENDOR), DrmCard(48 * GIB, 0)])
        snapshot = await AmdgpuSource(root=tmp_path).read()
        assert snapshot == GpuSnapshot(
            source="amdgpu",
            kind="gpu",
            devices=(
                GpuDevice(0, "AMD GPU (card0)", 16 * GIB, 14 * GIB, 2 * GIB),
                GpuDevice(2, "AMD GPU (card2)", 48 * GIB, 48 * GIB, 0),
            ),
        )
        assert snapshot.free_bytes == 62 * GIB

    async def test_selects_cards_by_number(self, tmp_path: Path) -> None:
        """devices picks cards by the N of cardN, in the order given."""
        amd_sysfs(tmp_path, [DrmCard(16 * GIB, GIB), DrmCard(24 * GIB, 4 * GIB)])
        snapshot = await AmdgpuSource(["1", 0], root=tmp_path).read()
        assert [(d.index, d.free_bytes) for d in snapshot.devices] == [(1, 20 * GIB), (0, 15 * GIB)]

    async def test_a_missing_card_is_unknown(self, tmp_path: Path) -> None:
        """Selecting a card that is not there is unknown, not a smaller sum."""
        drm = amd_sysfs(tmp_path, [DrmCard(), DrmCard(vendor=NVIDIA_VENDOR)])
        with capture_logs():
            snapshot = await AmdgpuSource([1], root=tmp_path).read()
        assert (snapshot.devices, snapshot.error) == ((), f"amdgpu card1 is not present: {drm} has card0")

    async def test_no_amdgpu_card_is_unknown(self, tmp_path: Path) -> None:
        """An NVIDIA-only host, and a host with no drm directory, say why there is nothing to read."""
        drm = amd_sysfs(tmp_path / "nvidia", [DrmCard(vendor=NVIDIA_VENDOR)])
        with capture_logs():
            nvidia_only = await AmdgpuSource(root=tmp_path / "nvidia").read()
            bare = await AmdgpuSource(root=tmp_path / "bare").read()
        assert nvidia_only.error == f"no amdgpu card (PCI vendor 0x1002) in {drm}"
        assert bare.error == (
            f"no amdgpu sysfs: cannot list {tmp_path}/bare/sys/class/drm: No such file or directory"
        )

    @pytest.mark.parametrize(
        ("broken", "why"),
        [
            ("missing", "cannot read {path}: No such file or directory"),
            ("directory", "cannot read {path}: Is a directory"),
            ("garbage", "{path} holds 'not a number', not a number of bytes"),
        ],
    )
    async def test_a_broken_counter_fails_the_read_logged_once(
        self, tmp_path: Path, broken: str, why: str
    ) -> None:
        """An unreadable or non-numeric counter is an unknown snapshot naming card and file, logged once."""
        drm = amd_sysfs(tmp_path, [DrmCard(), DrmCard(broken=broken)])  # type: ignore[arg-type]
        source = AmdgpuSource(root=tmp_path)
        with capture_logs() as logs:
            snapshots = [await source.read() for _ in range(3)]
        path = drm / "card1/device/mem_info_vram_total"
        assert {(s.devices, s.error, s.kind) for s in snapshots} == {
            ((), f"amdgpu card1: {why.format(path=path)}", "gpu")
        }
        assert [(e["source"], e["error"]) for e in events(logs, "gpu_unavailable")] == [
            ("amdgpu", snapshots[0].error)
        ]

    async def test_recovers_when_the_file_comes_back(self, tmp_path: Path) -> None:
        """A counter that reads again ends the streak with one gpu_recovered."""
        drm = amd_sysfs(tmp_path, [DrmCard(broken="missing")])
        source = AmdgpuSource(root=tmp_path)
        with capture_logs() as logs:
            assert not (await source.read()).known
            (drm / "card0/device/mem_info_vram_total").write_text(f"{8 * GIB}\n")
            (drm / "card0/device/mem_info_vram_used").write_text(f"{GIB}\n")
            back = await source.read()
        assert back.free_bytes == 7 * GIB
        assert len(events(logs, "gpu_recovered")) == 1

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file")
    async def test_a_counter_without_permission_fails_the_read(self, tmp_path: Path) -> None:
        """A mode-000 counter is a failed read saying Permission denied."""
        amd_sysfs(tmp_path, [DrmCard(broken="no_permission")])
        with capture_logs():
            snapshot = await AmdgpuSource(root=tmp_path).read()
        assert snapshot.error is not None and snapshot.error.endswith("Permission denied")

    async def test_integrated_radeons_are_left_out_unless_selected(self, tmp_path: Path) -> None:
        """A card under 1 GiB is an iGPU, skipped as Ollama does; selected by number it counts."""
        amd_sysfs(tmp_path, [DrmCard(512 * MIB, 100 * MIB), DrmCard(24 * GIB, GIB)])
        every = await AmdgpuSource(root=tmp_path).read()
        chosen = await AmdgpuSource([0], root=tmp_path).read()
        assert [d.index for d in every.devices] == [1]
        assert [(d.index, d.total_bytes) for d in chosen.devices] == [(0, 512 * MIB)]

    async def test_only_integrated_radeons_is_unknown(self, tmp_path: Path) -> None:
        """With nothing but an iGPU there is no GPU budget, and the fix is named."""
        amd_sysfs(tmp_path, [DrmCard(512 * MIB, 0)])
        with capture_logs():
            snapshot = await AmdgpuSource(root=tmp_path).read()
        assert snapshot.error is not None
        assert snapshot.error.startswith("only integrated Radeon GPUs (under 1 GiB of VRAM)")
        assert snapshot.error.endswith("card0; select one with devices = [N] to count it")

    async def test_product_name_and_busy_percent_when_the_driver_has_them(self, tmp_path: Path) -> None:
        """product_name names the card and gpu_busy_percent is its utilization."""
        drm = amd_sysfs(tmp_path, [DrmCard()])
        (drm / "card0/device/product_name").write_text("AMD Radeon RX 7900 XTX\n")
        (drm / "card0/device/gpu_busy_percent").write_text("42\n")
        (device,) = (await AmdgpuSource(root=tmp_path).read()).devices
        assert (device.name, device.utilization_pct) == ("AMD Radeon RX 7900 XTX", 42)

    async def test_reads_off_the_event_loop(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every sysfs file is read in a worker thread."""
        amd_sysfs(tmp_path, [DrmCard()])
        threads: set[int] = set()
        read_text = Path.read_text

        def recording(path: Path, *args: Any, **kwargs: Any) -> str:
            threads.add(threading.get_ident())
            return read_text(path, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", recording)
        assert (await AmdgpuSource(root=tmp_path).read()).known
        assert threads and threading.get_ident() not in threads

    def test_a_uuid_is_not_a_card(self) -> None:
        """amdgpu cards are numbers; a UUID is a programming error here (config refuses it first)."""
        with pytest.raises(
            ValueError, match=r"^amdgpu cards are selected by number \(1 for card1\), got 'GPU-1'$"
        ):
            AmdgpuSource(["GPU-1"])


# ---------------------------------------------------------------------------- /proc/meminfo


class TestMeminfoSource:
    async def test_mem_available_of_mem_total(self, tmp_path: Path) -> None:
        """One device: total MemTotal, free MemAvailable (KiB in the file, bytes here)."""
        path = meminfo(tmp_path / "meminfo", total_kib=32 * 1024 * 1024, available_kib=20 * 1024 * 1024)
        snapshot = await MeminfoSource(path).read()
        assert snapshot == GpuSnapshot(
            source="system",
            kind="system",
            devices=(GpuDevice(0, "system memory", 32 * GIB, 20 * GIB, 12 * GIB),),
        )

    async def test_old_kernels_are_estimated_as_ollama_does(self, tmp_path: Path) -> None:
        """Without MemAvailable, MemFree + Buffers + Cached stands in, named in the device and logged once."""
        path = meminfo(
            tmp_path / "meminfo",
            free_kib=4 * 1024 * 1024,
            available_kib=None,
            buffers_kib=512 * 1024,
            cached_kib=12 * 1024 * 1024,
        )
        source = MeminfoSource(path)
        with capture_logs() as logs:
            first, second = await source.read(), await source.read()
        assert first == second
        (device,) = first.devices
        assert device.free_bytes == (4 * GIB + 512 * MIB + 12 * GIB)
        assert device.name == "system memory (no MemAvailable: estimated as MemFree + Buffers + Cached)"
        assert [e["path"] for e in events(logs, "memory_estimated")] == [str(path)]
        assert events(logs, "gpu_unavailable") == []

    @pytest.mark.parametrize(
        ("text", "why"),
        [
            ("MemFree: 1 kB\nMemAvailable: 2 kB\n", "no MemTotal line"),
            (
                "MemTotal: 10 kB\nMemFree: 1 kB\n",
                "no MemAvailable line, and no Buffers, Cached to estimate it from",
            ),
            ("MemTotal: lots kB\n", "MemTotal: 'lots kB' is not a number"),
        ],
    )
    async def test_a_malformed_file_is_unknown_logged_once(self, tmp_path: Path, text: str, why: str) -> None:
        """A file that does not give the figures is an unknown snapshot with the reason, logged once."""
        path = tmp_path / "meminfo"
        path.write_text(text)
        source = MeminfoSource(path)
        with capture_logs() as logs:
            snapshots = [await source.read() for _ in range(2)]
        assert {(s.error, s.kind) for s in snapshots} == {(f"{path}: {why}", "system")}
        assert len(events(logs, "gpu_unavailable")) == 1

    async def test_a_missing_file_is_unknown_then_recovers(self, tmp_path: Path) -> None:
        """No such file is unknown; once it exists the read recovers, logged once each way."""
        path = tmp_path / "meminfo"
        source = MeminfoSource(path)
        with capture_logs() as logs:
            missing = await source.read()
            meminfo(path)
            back = await source.read()
        assert missing.error == f"cannot read {path}: No such file or directory"
        assert back.known
        assert (len(events(logs, "gpu_unavailable")), len(events(logs, "gpu_recovered"))) == (1, 1)

    def test_parses_the_kernels_real_layout(self) -> None:
        """HugePages counts have no unit and are not scaled; only the lines needed are required."""
        parsed = parse_meminfo("MemTotal:  100 kB\nMemAvailable:  60 kB\nHugePages_Total:  3\n")
        assert (parsed.total_bytes, parsed.available_bytes, parsed.estimated) == (100 * KIB, 60 * KIB, False)


# ---------------------------------------------------------------------------- Apple Silicon


class TestAppleSource:
    async def test_metals_limit_minus_what_ollamas_models_hold(self) -> None:
        """With Metal: total is its working-set limit, free is that minus the models' size_vram."""
        mac = apple_silicon(total_gib=64, available_gib=40)
        source = AppleSource(stub_ps(20 * GIB, 4 * GIB), mac_readers(mac))
        snapshot = await source.read()
        limit = mac.recommended_max_working_set_bytes
        assert snapshot == GpuSnapshot(
            source="apple",
            kind="unified",
            devices=(
                GpuDevice(
                    0, "Apple M2 Max (unified memory, GPU limit: Metal)", limit, limit - 24 * GIB, 24 * GIB
                ),
            ),
        )

    async def test_available_memory_caps_the_budget(self) -> None:
        """When the OS has less to give than the GPU limit leaves, available memory is the budget."""
        mac = apple_silicon(total_gib=32, available_gib=6)
        snapshot = await AppleSource(stub_ps(GIB), mac_readers(mac)).read()
        assert snapshot.free_bytes == 6 * GIB
        assert snapshot.total_bytes == mac.gpu_limit_bytes

    @pytest.mark.parametrize(
        ("total_gib", "wired_mb", "limit_from"),
        [(32, 0, "estimated"), (96, 0, "estimated"), (96, 90 * 1024, "iogpu.wired_limit_mb")],
    )
    async def test_without_metal_the_wired_limit_or_metals_default(
        self, total_gib: int, wired_mb: int, limit_from: str
    ) -> None:
        """Without PyObjC the limit is iogpu.wired_limit_mb when set, else 2/3 or 3/4 of RAM."""
        mac = apple_silicon(total_gib=total_gib, wired_limit_mb=wired_mb, available_gib=total_gib)
        (device,) = (await AppleSource(stub_ps(), mac_readers(mac, metal=False)).read()).devices
        assert (device.total_bytes, device.free_bytes) == (mac.gpu_limit_bytes, mac.gpu_limit_bytes)
        assert device.name.endswith(f"(unified memory, GPU limit: {limit_from})")

    async def test_a_mac_without_the_wired_limit_sysctl_uses_the_default(self) -> None:
        """macOS before 14 has no iogpu.wired_limit_mb: the default applies."""
        mac = apple_silicon(total_gib=16, available_gib=12)
        sysctl = {k: v for k, v in mac.sysctl.items() if k != "iogpu.wired_limit_mb"}
        snapshot = await AppleSource(stub_ps(), mac_readers(mac, metal=False, sysctl=sysctl.get)).read()
        assert snapshot.total_bytes == default_working_set_bytes(16 * GIB) == 16 * GIB * 2 // 3

    async def test_metal_failing_falls_back_to_sysctl(self) -> None:
        """A Metal binding that raises is treated as absent."""
        mac = apple_silicon(total_gib=96, wired_limit_mb=80 * 1024)

        def broken() -> int:
            raise RuntimeError("no Metal device")

        snapshot = await AppleSource(stub_ps(), mac_readers(mac, working_set=broken)).read()
        assert snapshot.total_bytes == 80 * GIB

    async def test_an_intel_mac_is_unknown(self) -> None:
        """Ollama runs on the CPU on Intel Macs; the source says so instead of guessing."""
        mac = apple_silicon(chip="Intel(R) Core(TM) i9-9980HK CPU @ 2.40GHz")
        with capture_logs():
            snapshot = await AppleSource(stub_ps(), mac_readers(mac)).read()
        assert snapshot.error == "not Apple Silicon: the CPU is Intel(R) Core(TM) i9-9980HK CPU @ 2.40GHz"
        assert snapshot.kind == "unified"

    async def test_a_missing_sysctl_is_unknown_logged_once(self) -> None:
        """No sysctl binary (or one that fails) is an unknown snapshot with the reason, logged once."""

        def no_sysctl(name: str) -> str | None:
            raise FileNotFoundError(2, "No such file or directory", "/usr/sbin/sysctl")

        source = AppleSource(stub_ps(), mac_readers(apple_silicon(), sysctl=no_sysctl))
        with capture_logs() as logs:
            snapshots = [await source.read() for _ in range(2)]
        assert {s.error for s in snapshots} == {
            "sysctl machdep.cpu.brand_string failed: No such file or directory: /usr/sbin/sysctl"
        }
        assert len(events(logs, "gpu_unavailable")) == 1

    async def test_garbage_from_vm_stat_is_unknown(self) -> None:
        """vm_stat output without pages is a failed read."""
        source = AppleSource(stub_ps(), mac_readers(apple_silicon(), vm_stat=lambda: "vm_stat: oops\n"))
        with capture_logs():
            snapshot = await source.read()
        assert snapshot.error == "vm_stat failed: vm_stat printed no page size"

    async def test_without_api_ps_the_read_is_unknown_but_the_probe_passes(self) -> None:
        """What Ollama's models hold comes from /api/ps; the host check does not need it."""
        source = AppleSource(failing_ps(RuntimeError("/api/ps not read yet")), mac_readers(apple_silicon()))
        await source.probe()
        with capture_logs():
            snapshot = await source.read()
        assert snapshot.error == (
            "GET /api/ps from Ollama failed: /api/ps not read yet (needed for what its models hold)"
        )

    def test_vm_stat_counts_free_inactive_and_speculative_pages(self) -> None:
        """Ollama's figure for a Mac: (free + inactive + speculative) x page size."""
        text = (
            "Mach Virtual Memory Statistics: (page size of 4096 bytes)\nPages free:  10.\n"
            "Pages active:  99.\nPages inactive:  20.\nPages speculative:  3.\nPages purgeable:  7.\n"
        )
        assert parse_vm_stat(text) == 33 * 4096


# ---------------------------------------------------------------------------- auto


def auto_for(
    tmp_path: Path,
    *,
    platform: str,
    nvml: FakeNvml,
    mac: AppleSiliconHost | None = None,
    devices: tuple[str, ...] | None = None,
) -> AutoSource:
    """auto as build_source makes it, on a host described by ``tmp_path`` (sysfs, meminfo) and the fakes."""
    settings = GpuSettings(devices=devices, sysfs_root=tmp_path, meminfo_path=tmp_path / "meminfo")
    readers = mac_readers(mac or apple_silicon())
    source = build_source(settings, stub_ps(), nvml=nvml, apple=readers, platform=platform)
    assert isinstance(source, AutoSource)
    return source


class TestAutoOrder:
    async def test_nvidia_host(self, tmp_path: Path) -> None:
        """NVML with a GPU wins, even with amdgpu cards and /proc/meminfo present."""
        amd_sysfs(tmp_path, [DrmCard()])
        meminfo(tmp_path / "meminfo")
        source = auto_for(tmp_path, platform="linux", nvml=nvidia_gpus((24, 2)))
        with capture_logs() as logs:
            snapshot = await source.read()
        assert (source.name, snapshot.kind, snapshot.free_bytes, source.skipped) == (
            "nvml",
            "gpu",
            22 * GIB,
            (),
        )
        assert [(e["source"], e["skipped"]) for e in events(logs, "gpu_source_chosen")] == [("nvml", [])]

    async def test_amd_host(self, tmp_path: Path) -> None:
        """Without NVML, an amdgpu card is next; why NVML was passed over is kept."""
        amd_sysfs(tmp_path, [DrmCard(24 * GIB, 3 * GIB)])
        meminfo(tmp_path / "meminfo")
        source = auto_for(tmp_path, platform="linux", nvml=failing_nvml())
        snapshot = await source.read()
        assert (source.name, snapshot.kind, snapshot.free_bytes) == ("amdgpu", "gpu", 21 * GIB)
        assert source.skipped == ("NVML unavailable: NVML Shared Library Not Found",)

    async def test_nvml_with_no_gpu_is_passed_over(self, tmp_path: Path) -> None:
        """NVML that initialises but sees no GPU does not count as a GPU host."""
        amd_sysfs(tmp_path, [DrmCard()])
        source = auto_for(tmp_path, platform="linux", nvml=nvidia_gpus())
        await source.read()
        assert (source.name, source.skipped) == ("amdgpu", ("NVML sees no GPUs",))

    async def test_apple_silicon_host(self, tmp_path: Path) -> None:
        """On macOS with no NVIDIA or AMD GPU, unified memory is chosen."""
        mac = apple_silicon(total_gib=64, available_gib=40)
        source = auto_for(tmp_path, platform="darwin", nvml=failing_nvml(), mac=mac)
        snapshot = await source.read()
        assert (source.name, snapshot.kind, snapshot.total_bytes) == (
            "apple",
            "unified",
            mac.recommended_max_working_set_bytes,
        )
        assert source.skipped[1] == (
            f"no amdgpu sysfs: cannot list {tmp_path}/sys/class/drm: No such file or directory"
        )

    async def test_cpu_only_linux_host(self, tmp_path: Path) -> None:
        """On Linux with no GPU source, system memory is chosen."""
        amd_sysfs(tmp_path, [DrmCard(vendor=NVIDIA_VENDOR)])  # a card, but no driver NVML can open
        meminfo(tmp_path / "meminfo", total_kib=64 * 1024 * 1024, available_kib=50 * 1024 * 1024)
        source = auto_for(tmp_path, platform="linux", nvml=failing_nvml())
        snapshot = await source.read()
        assert (source.name, snapshot.kind, snapshot.free_bytes) == ("system", "system", 50 * GIB)
        assert len(source.skipped) == 2

    async def test_a_broken_amdgpu_card_falls_back_to_the_next_source(self, tmp_path: Path) -> None:
        """An amdgpu card whose counters cannot be read fails the probe; system memory is next."""
        amd_sysfs(tmp_path, [DrmCard(broken="directory")])
        meminfo(tmp_path / "meminfo")
        source = auto_for(tmp_path, platform="linux", nvml=failing_nvml())
        with capture_logs() as logs:
            await source.read()
        assert source.name == "system"
        assert source.skipped[1].startswith("amdgpu card0: cannot read ")
        assert events(logs, "gpu_unavailable") == []

    async def test_mac_tools_failing_ends_at_none(self, tmp_path: Path) -> None:
        """On macOS without a working sysctl, nothing is left: none, with every reason."""

        def no_sysctl(name: str) -> str | None:
            raise FileNotFoundError(2, "No such file or directory", "/usr/sbin/sysctl")

        settings = GpuSettings(sysfs_root=tmp_path)
        readers = mac_readers(apple_silicon(), sysctl=no_sysctl)
        source = build_source(settings, stub_ps(), nvml=failing_nvml(), apple=readers, platform="darwin")
        snapshot = await source.read()
        assert (source.name, snapshot.kind) == ("none", "unknown")
        assert snapshot.error is not None and snapshot.error.startswith(
            "source auto found no GPU: NVML unavailable: NVML Shared Library Not Found; no amdgpu sysfs"
        )
        assert snapshot.error.endswith(
            "; sysctl machdep.cpu.brand_string failed: No such file or directory: /usr/sbin/sysctl"
        )

    async def test_other_platforms_end_at_none(self, tmp_path: Path) -> None:
        """Windows has neither Apple's memory nor /proc/meminfo to fall back to."""
        meminfo(tmp_path / "meminfo")
        source = auto_for(tmp_path, platform="win32", nvml=failing_nvml())
        await source.read()
        assert source.name == "none" and len(source.skipped) == 2

    async def test_nvidia_uuids_leave_amdgpu_out(self, tmp_path: Path) -> None:
        """A devices list of NVIDIA UUIDs is not a card selection: amdgpu is not tried."""
        amd_sysfs(tmp_path, [DrmCard()])
        meminfo(tmp_path / "meminfo")
        source = auto_for(tmp_path, platform="linux", nvml=failing_nvml(), devices=("GPU-8f6c-aa",))
        await source.read()
        assert [type(c) for c in source.candidates] == [NvmlSource, MeminfoSource]
        assert source.name == "system"

    async def test_the_choice_is_made_once(self, tmp_path: Path) -> None:
        """Later reads go to the chosen source; probes are not repeated."""
        amd_sysfs(tmp_path, [DrmCard()])
        nvml = failing_nvml()
        source = auto_for(tmp_path, platform="linux", nvml=nvml)
        with capture_logs() as logs:
            for _ in range(3):
                await source.read()
        assert nvml.calls == 1
        assert len(events(logs, "gpu_source_chosen")) == 1


# ---------------------------------------------------------------------------- kind


class TestSnapshotKind:
    def test_source_names_imply_a_kind(self) -> None:
        """A snapshot built with a source name and no kind gets that source's kind."""
        kinds = {
            name: GpuSnapshot(source=name).kind
            for name in ("nvml", "amdgpu", "ollama", "apple", "system", "none", "counting")
        }
        assert kinds == {
            "nvml": "gpu",
            "amdgpu": "gpu",
            "ollama": "gpu",
            "apple": "unified",
            "system": "system",
            "none": "unknown",
            "counting": "unknown",
        }
        assert GpuSnapshot(source="counting", kind="system").kind == "system"

    async def test_none_is_unknown(self) -> None:
        """The none source reads kind unknown."""
        assert (await NoGpuSource().read()).kind == "unknown"

    async def test_the_sampler_keeps_the_kind_when_a_read_raises(self, tmp_path: Path) -> None:
        """A raising read is unknown but still says what memory the host has."""

        class Flaky:
            name = "flaky"

            def __init__(self) -> None:
                self.fail = False

            async def read(self) -> GpuSnapshot:
                if self.fail:
                    raise RuntimeError("boom")
                return GpuSnapshot(source="flaky", kind="system", devices=(GpuDevice(0, "ram", 8, 4, 4),))

            async def close(self) -> None:
                return None

        source = Flaky()
        sampler = GpuSampler(source)
        await sampler.refresh()
        source.fail = True
        with capture_logs():
            failed = await sampler.refresh()
        assert (failed.known, failed.kind) == (False, "system")


# ---------------------------------------------------------------------------- check


class TestCheckOutput:
    async def test_auto_says_what_it_chose_skipped_and_read(self, tmp_path: Path) -> None:
        """For auto: the chosen source and kind, each skipped source's reason, then each device."""
        amd_sysfs(tmp_path, [DrmCard(24 * GIB, 3 * GIB), DrmCard(16 * GIB, 0)])
        source = auto_for(tmp_path, platform="linux", nvml=failing_nvml())
        with capture_logs():
            lines = describe_reading("auto", source, await read_once(source))
        assert lines == [
            "memory: source auto chose amdgpu on this host (gpu memory)",
            "  skipped: NVML unavailable: NVML Shared Library Not Found",
            "  0: AMD GPU (card0): 21.0 GiB free of 24.0 GiB",
            "  1: AMD GPU (card1): 16.0 GiB free of 16.0 GiB",
            "  total: 37.0 GiB free of 40.0 GiB",
        ]

    async def test_auto_with_nothing_to_read(self, tmp_path: Path) -> None:
        """auto ending at none lists every reason and says policies leave num_ctx alone."""
        source = auto_for(tmp_path, platform="win32", nvml=failing_nvml())
        lines = describe_reading("auto", source, await read_once(source))
        assert lines[0] == "memory: source auto chose none on this host (unknown memory)"
        assert lines[-1] == "  unknown: policies leave num_ctx alone"
        assert len(lines) == 4

    async def test_a_failing_read_is_printed(self) -> None:
        """A named source that cannot read prints why; nothing raises."""
        source = NvmlSource(None, nvml=failing_nvml())
        with capture_logs():
            lines = describe_reading("nvml", source, await read_once(source))
        assert lines == [
            "memory: source nvml (gpu memory)",
            "  unknown: NVML unavailable: NVML Shared Library Not Found",
        ]

    async def test_a_hanging_or_raising_source_is_a_snapshot(self) -> None:
        """read_once bounds the read and turns an exception into an unknown snapshot."""

        class Stuck:
            name = "stuck"
            closed = False

            async def read(self) -> GpuSnapshot:
                await asyncio.Event().wait()
                raise AssertionError("unreachable")

            async def close(self) -> None:
                self.closed = True

        class Raising(Stuck):
            name = "raising"

            async def read(self) -> GpuSnapshot:
                raise OSError("gone")

        stuck, raising = Stuck(), Raising()
        assert (await read_once(stuck, timeout_s=0.01)).error == "no answer within 0.01 s"
        assert (await read_once(raising)).error == "read failed: OSError('gone')"
        assert stuck.closed and raising.closed

    def test_check_prints_the_system_source(self, tmp_path: Path) -> None:
        """``check`` with source = "system" prints what /proc/meminfo (here, a fixture) says."""
        path = meminfo(tmp_path / "meminfo", total_kib=16 * 1024 * 1024, available_kib=9 * 1024 * 1024)
        config = tmp_path / "c.toml"
        config.write_text(f'[gpu]\nsource = "system"\nmeminfo_path = "{path}"\n')
        done = check(config)
        assert done.returncode == 0, done.stderr
        assert f"gpu: source system, reserve 1.0 GiB, meminfo_path {path}\n" in done.stdout
        assert (
            "memory: source system (system memory)\n  0: system memory: 9.0 GiB free of 16.0 GiB\nok\n"
            in done.stdout
        )

    def test_check_never_fails_on_a_failing_source(self, tmp_path: Path) -> None:
        """An amdgpu source with no cards prints the reason and check still says ok."""
        config = tmp_path / "c.toml"
        config.write_text(f'[gpu]\nsource = "amdgpu"\nsysfs_root = "{tmp_path}"\n')
        done = check(config)
        assert done.returncode == 0, done.stderr
        assert done.stdout.endswith(
            "memory: source amdgpu (gpu memory)\n"
            f"  unknown: no amdgpu sysfs: cannot list {tmp_path}/sys/class/drm: No such file or directory\nok\n"
        )


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# ---------------------------------------------------------------------------- status page


class TestStatusPage:
    async def test_a_cpu_host_shows_system_memory_and_no_spill(
        self, start_fake: StartFake, start_proxy: StartProxy, tmp_path: Path
    ) -> None:
        """source = "system": the status page shows kind system, and a CPU model (size_vram 0) is not spilled."""
        path = meminfo(tmp_path / "meminfo", total_kib=32 * 1024 * 1024, available_kib=20 * 1024 * 1024)
        fake = await start_fake(**cpu_only())
        server = await start_proxy(fake.url, f'[gpu]\nsource = "system"\nmeminfo_path = "{path}"\n')  # type: ignore[attr-defined]
        async with aiohttp.ClientSession() as http:

            async def status() -> Any:
                async with http.get(f"{server.url}/governor/status") as response:
                    return await response.json()

            await eventually(lambda: server.app[MEMORY].snapshot.known, what="the first meminfo read")
            gpu = (await status())["gpu"]
            assert {k: gpu[k] for k in ("source", "configured_source", "kind", "known", "free_bytes")} == {
                "source": "system",
                "configured_source": "system",
                "kind": "system",
                "known": True,
                "free_bytes": 20 * GIB,
            }
            async with http.post(
                f"{server.url}/api/generate", json={"model": "gemma3-270m", "prompt": "hi", "stream": False}
            ) as response:
                assert response.status == 200
            await eventually(
                lambda: any(not model.provisional for model in server.app[FACTS].loaded),
                what="the model in /api/ps",
            )
            (loaded,) = (await status())["loaded"]
        assert (loaded["size_vram_bytes"], loaded["spilled"]) == (0, False)
        assert loaded["size_bytes"] > 0

    async def test_auto_shows_what_it_chose(self, start_fake: StartFake, start_proxy: StartProxy) -> None:
        """With auto, source is the chosen one and configured_source says auto."""
        fake = await start_fake()
        nvml = nvidia_gpus((24, 2))
        server = await start_proxy(fake.url, "", memory_source=AutoSource(NvmlSource(None, nvml=nvml)))  # type: ignore[attr-defined]
        await eventually(lambda: server.app[MEMORY].snapshot.known, what="the first NVML read")
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/governor/status") as response:
            gpu = (await response.json())["gpu"]
        assert (gpu["source"], gpu["configured_source"], gpu["kind"]) == ("nvml", "auto", "gpu")
