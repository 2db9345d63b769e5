"""The host fixtures of tests/hosts.py write what real hosts expose, so readers can be tested on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import OllamaClients, StartFake
from tests.fake_ollama import FakeOllama, gemma3_270m
from tests.hosts import (
    AMD_VENDOR,
    NVIDIA_VENDOR,
    DrmCard,
    amd_sysfs,
    apple_silicon,
    cpu_only,
    meminfo,
    nvidia_gpus,
)

GiB = 1 << 30


def read_int(path: Path) -> int:
    return int(path.read_text().strip())


class TestAmdSysfs:
    def test_cards_have_vendor_and_vram_counters(self, tmp_path: Path) -> None:
        """Each amdgpu card has vendor 0x1002 and byte counters; other vendors have no counters."""
        drm = amd_sysfs(
            tmp_path, [DrmCard(16 * GiB, 2 * GiB), DrmCard(vendor=NVIDIA_VENDOR), DrmCard(48 * GiB, 0)]
        )
        assert drm == tmp_path / "sys/class/drm"
        cards = sorted(p.name for p in drm.iterdir() if p.name.startswith("card") and "-" not in p.name)
        assert cards == ["card0", "card1", "card2"]
        assert (drm / "card0/device/vendor").read_text().strip() == AMD_VENDOR
        assert (
            read_int(drm / "card0/device/mem_info_vram_total"),
            read_int(drm / "card0/device/mem_info_vram_used"),
        ) == (16 * GiB, 2 * GiB)
        assert not (drm / "card1/device/mem_info_vram_total").exists()
        assert read_int(drm / "card2/device/mem_info_vram_total") == 48 * GiB
        assert (drm / "renderD128").is_dir() and (drm / "card0-DP-1").is_dir()

    @pytest.mark.parametrize(
        ("broken", "error"),
        [("missing", FileNotFoundError), ("directory", IsADirectoryError), ("garbage", ValueError)],
    )
    def test_a_broken_counter_fails_the_way_it_would(
        self, tmp_path: Path, broken: str, error: type[Exception]
    ) -> None:
        """Missing, a directory, or not a number: reading the counter raises, as on a real host."""
        drm = amd_sysfs(tmp_path, [DrmCard(broken=broken)])  # type: ignore[arg-type]
        with pytest.raises(error):
            read_int(drm / "card0/device/mem_info_vram_used")

    def test_no_permission_makes_the_file_mode_000(self, tmp_path: Path) -> None:
        """The no_permission counter exists with mode 000 (unreadable except for root)."""
        drm = amd_sysfs(tmp_path, [DrmCard(broken="no_permission")])
        path = drm / "card0/device/mem_info_vram_total"
        assert path.exists() and (path.stat().st_mode & 0o777) == 0
        if os.geteuid() != 0:
            with pytest.raises(PermissionError):
                path.read_text()


class TestMeminfo:
    def test_the_kernel_layout_with_mem_available(self, tmp_path: Path) -> None:
        """Lines are "Name:  value kB"; MemAvailable is there by default."""
        path = meminfo(tmp_path / "meminfo", total_kib=1000, free_kib=100, available_kib=600)
        fields = {line.split(":")[0]: line.split()[1:] for line in path.read_text().splitlines()}
        assert fields["MemTotal"] == ["1000", "kB"] and fields["MemAvailable"] == ["600", "kB"]
        assert list(fields)[:3] == ["MemTotal", "MemFree", "MemAvailable"]

    def test_old_kernels_lack_mem_available(self, tmp_path: Path) -> None:
        """available_kib=None writes no MemAvailable line; MemFree, Buffers and Cached remain."""
        text = meminfo(tmp_path / "meminfo", available_kib=None).read_text()
        assert "MemAvailable" not in text and all(f"{k}:" in text for k in ("MemFree", "Buffers", "Cached"))


class TestAppleSilicon:
    @pytest.mark.parametrize(
        ("total_gib", "wired_mb", "limit"),
        [(32, 0, 32 * GiB * 2 // 3), (96, 0, 72 * GiB), (96, 90 * 1024, 90 * GiB)],
    )
    def test_the_gpu_limit(self, total_gib: int, wired_mb: int, limit: int) -> None:
        """Metal's working set (2/3 or 3/4 of RAM) applies unless iogpu.wired_limit_mb is set."""
        mac = apple_silicon(total_gib=total_gib, wired_limit_mb=wired_mb)
        assert mac.gpu_limit_bytes == limit
        assert mac.sysctl["hw.memsize"] == str(total_gib * GiB)
        assert mac.sysctl["iogpu.wired_limit_mb"] == str(wired_mb)


class TestNvidiaAndCpu:
    def test_nvidia_gpus_feed_fake_nvml(self) -> None:
        """nvidia_gpus builds a FakeNvml whose memory info NvmlSource reads."""
        nvml = nvidia_gpus((24, 2), (16, 0))
        nvml.nvmlInit()
        info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(1))
        assert (nvml.nvmlDeviceGetCount(), info.total, info.free) == (2, 16 * GiB, 16 * GiB)

    async def test_a_cpu_only_ollama_reports_no_vram(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """On a CPU-only host every /api/ps size_vram is 0 and the default context is 4096."""
        fake = await start_fake(**cpu_only(models=[gemma3_270m()]))
        client = ollama_client(fake.url)  # type: ignore[attr-defined]
        await client.generate(model="gemma3-270m", prompt="hi")
        (entry,) = (await client.ps()).models
        assert (entry.size_vram, entry.context_length, fake.free_vram_bytes()) == (0, 4096, None)
        assert isinstance(fake, FakeOllama) and fake.vram_bytes is None
