"""The GPU sampler and its sources: NVML (faked by an injected module), /api/ps, none and auto
(amdgpu, Apple and /proc/meminfo: tests/test_memory_sources.py)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from structlog.testing import capture_logs

from policies.context import GpuDevice, GpuSnapshot
from policies.memory import GIB, MIB
from proxy.config import ConfigError, Table, parse_config
from proxy.config.settings import GpuSettings, OllamaSettings, parse_gpu_section
from proxy.facts.memory import (
    AmdgpuSource,
    AppleSource,
    AutoSource,
    GpuSampler,
    MeminfoSource,
    NoGpuSource,
    NvmlSource,
    OllamaPsSource,
    build_sampler,
    build_source,
)
from proxy.facts.ollama import Facts
from proxy.keys import MEMORY
from proxy.upstream.client import Upstream
from tests.conftest import StartFake, StartProxy, eventually, free_port
from tests.fake_nvml import FakeLibraryNotFound, FakeNvml, FakeNVMLError
from tests.fake_ollama import llama_tiny


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# ---------------------------------------------------------------------------- NvmlSource


class TestNvmlSource:
    async def test_reads_every_gpu_by_default(self) -> None:
        """Each GPU's total, free, used and utilization; names as str even from bytes."""
        snapshot = await NvmlSource(None, nvml=FakeNvml()).read()
        assert snapshot == GpuSnapshot(
            source="nvml",
            devices=(
                GpuDevice(0, "NVIDIA GeForce RTX 4090", 24 * GIB, 22 * GIB, 2 * GIB, utilization_pct=37),
                GpuDevice(1, "NVIDIA RTX A4000", 16 * GIB, 15 * GIB, 1 * GIB, utilization_pct=None),
            ),
        )
        assert snapshot.free_bytes == 37 * GIB

    @pytest.mark.parametrize("selection", [[1], ["1"], [" 1 "]])
    async def test_selects_by_index(self, selection: list[int | str]) -> None:
        """Only the selected GPU counts, keeping its NVML index."""
        snapshot = await NvmlSource(selection, nvml=FakeNvml()).read()
        assert [(d.index, d.name) for d in snapshot.devices] == [(1, "NVIDIA RTX A4000")]

    async def test_selects_by_uuid_in_the_given_order(self) -> None:
        """UUIDs are resolved to their NVML index; the order is the selection's."""
        snapshot = await NvmlSource(["GPU-bbbb-1111", "0"], nvml=FakeNvml()).read()
        assert [d.index for d in snapshot.devices] == [1, 0]
        assert snapshot.total_bytes == 40 * GIB

    async def test_a_missing_index_is_an_error(self) -> None:
        """Selecting a GPU that is not there is unknown, not a smaller sum; NVML is shut again."""
        nvml = FakeNvml()
        snapshot = await NvmlSource([5], nvml=nvml).read()
        assert not snapshot.known
        assert snapshot.error == "GPU 5 is not present: NVML sees 2 GPU(s) (0-1)"
        assert nvml.inits == nvml.shutdowns == 1

    async def test_a_missing_uuid_is_an_error(self) -> None:
        """An unknown UUID says which one and NVML's reason."""
        snapshot = await NvmlSource(["GPU-ffff"], nvml=FakeNvml()).read()
        assert snapshot.error == "GPU 'GPU-ffff' not found: Not Found"

    async def test_nvml_runs_off_the_event_loop(self) -> None:
        """Every NVML call happens in a worker thread."""
        nvml = FakeNvml()
        source = NvmlSource(None, nvml=nvml)
        await source.read()
        await source.close()
        assert nvml.calls > 0
        assert threading.get_ident() not in nvml.threads

    async def test_opens_once_and_closes(self) -> None:
        """NVML is initialised on the first read only and shut down by close()."""
        nvml = FakeNvml()
        source = NvmlSource(None, nvml=nvml)
        for _ in range(3):
            await source.read()
        assert (nvml.inits, nvml.shutdowns) == (1, 0)
        await source.close()
        assert (nvml.inits, nvml.shutdowns) == (1, 1)

    async def test_missing_pynvml_is_unknown_and_logged_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without nvidia-ml-py the snapshot is unknown with the fix in the error, logged once."""
        monkeypatch.setitem(sys.modules, "pynvml", None)
        source = NvmlSource(None)
        with capture_logs() as logs:
            first = await source.read()
            second = await source.read()
        assert first.devices == second.devices == ()
        assert first.error is not None
        assert first.error.startswith("NVML unavailable: pynvml is not installed (pip install nvidia-ml-py)")
        assert [(e["log_level"], e["error"]) for e in events(logs, "gpu_unavailable")] == [
            ("warning", first.error)
        ]

    async def test_init_failure_is_logged_once_then_recovery(self) -> None:
        """nvmlInit failing (no library, no driver) logs once; a later success logs gpu_recovered."""
        nvml = FakeNvml()
        nvml.init_error = FakeLibraryNotFound()
        source = NvmlSource(None, nvml=nvml)
        with capture_logs() as logs:
            failed = [await source.read() for _ in range(3)]
            nvml.init_error = None
            recovered = await source.read()
            await source.read()
        assert {s.error for s in failed} == {"NVML unavailable: NVML Shared Library Not Found"}
        assert recovered.known
        assert [e["error"] for e in events(logs, "gpu_unavailable")] == [
            "NVML unavailable: NVML Shared Library Not Found"
        ]
        assert len(events(logs, "gpu_recovered")) == 1

    async def test_a_read_error_reopens_nvml(self) -> None:
        """A failing read shuts NVML down; the next read initialises it again and recovers."""
        nvml = FakeNvml()
        source = NvmlSource(None, nvml=nvml)
        assert (await source.read()).known
        nvml.read_error = FakeNVMLError("GPU is lost")
        with capture_logs() as logs:
            lost = await source.read()
            await source.read()
            nvml.read_error = None
            back = await source.read()
        assert lost.error == "NVML read failed: GPU is lost"
        assert back.known
        assert nvml.inits == 3  # first open, the retry while still lost, the recovery
        assert len(events(logs, "gpu_unavailable")) == 1
        assert len(events(logs, "gpu_recovered")) == 1


# ---------------------------------------------------------------------------- OllamaPsSource


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def load_model(url: str, session: aiohttp.ClientSession, model: str = "gemma3-270m") -> None:
    """An empty generate request loads the model, as with the real Ollama."""
    async with session.post(f"{url}/api/generate", json={"model": model}) as response:
        assert response.status == 200, await response.text()


def stub_ps(answer: Any) -> Any:
    """A ``/api/ps`` reader answering a fixed document, as the facts poller's last read would."""

    async def read() -> Any:
        return answer

    return read


def reads_ps(upstream: Upstream) -> Any:
    """A ``/api/ps`` reader that asks Ollama each time."""

    async def read() -> Any:
        return await upstream.get_json("/api/ps")

    return read


class TestOllamaPsSource:
    async def test_configured_total_minus_size_vram(
        self, start_fake: StartFake, session: aiohttp.ClientSession
    ) -> None:
        """Free VRAM is the configured total minus what the loaded models hold on the GPU."""
        fake = await start_fake(vram_bytes=24 * GIB, models=[llama_tiny()])
        upstream = Upstream(fake.url, session)  # type: ignore[attr-defined]
        source = OllamaPsSource(reads_ps(upstream), [24 * GIB])
        assert (await source.read()).free_bytes == 24 * GIB
        await load_model(fake.url, session, "llama-tiny")  # type: ignore[attr-defined]
        size_vram = sum(state.size_vram for state in fake.loaded().values())
        assert size_vram > 0
        snapshot = await source.read()
        assert snapshot.devices == (
            GpuDevice(0, "GPU 0 (24.0 GiB configured)", 24 * GIB, 24 * GIB - size_vram, size_vram),
        )
        assert snapshot.free_bytes == fake.free_vram_bytes()

    async def test_what_ps_leaves_out_is_added_back(
        self, start_fake: StartFake, session: aiohttp.ClientSession
    ) -> None:
        """A sliding-window model's full-attention cache, missing from size_vram, is added back
        from the model's facts, so free VRAM is what the GPU really has left."""
        fake = await start_fake(vram_bytes=24 * GIB)
        upstream = Upstream(fake.url, session)  # type: ignore[attr-defined]
        facts = Facts(upstream, OllamaSettings())
        assert await facts.model_facts("gemma3-270m") is not None
        await load_model(fake.url, session)  # type: ignore[attr-defined]
        [state] = fake.loaded().values()
        assert state.size_vram < state.footprint_vram_bytes  # what /api/ps hides
        naive = await OllamaPsSource(reads_ps(upstream), [24 * GIB]).read()
        corrected = await OllamaPsSource(reads_ps(upstream), [24 * GIB], facts.ps_hidden_bytes).read()
        assert naive.free_bytes == 24 * GIB - state.size_vram
        assert corrected.free_bytes == fake.free_vram_bytes()

    async def test_several_gpus_are_filled_in_order(self) -> None:
        """With several GPUs the used bytes fill the first before the next; the sum is exact."""
        answer = {"models": [{"name": "a", "size_vram": 10 * GIB}, {"name": "b", "size_vram": 4 * GIB}]}
        source = OllamaPsSource(stub_ps(answer), [12 * GIB, 8 * GIB])
        snapshot = await source.read()
        assert [(d.used_bytes, d.free_bytes) for d in snapshot.devices] == [
            (12 * GIB, 0),
            (2 * GIB, 6 * GIB),
        ]
        assert snapshot.free_bytes == 6 * GIB

    async def test_a_malformed_answer_is_unknown(self) -> None:
        """An answer without models[].size_vram is an error, not zero usage."""
        source = OllamaPsSource(stub_ps({"models": [{"name": "a"}, {"size_vram": "1"}]}), [GIB])
        with capture_logs():
            snapshot = await source.read()
        assert snapshot.error == "GET /api/ps from Ollama failed: a model has no valid 'size_vram': '1'"

    async def test_unreachable_ollama_is_logged_once_then_recovers(
        self, start_fake: StartFake, session: aiohttp.ClientSession
    ) -> None:
        """Connection refused gives an unknown snapshot, logged once; Ollama coming up recovers."""
        port = free_port()
        upstream = Upstream(f"http://127.0.0.1:{port}", session)
        source = OllamaPsSource(reads_ps(upstream), [24 * GIB])
        with capture_logs() as logs:
            down = [await source.read() for _ in range(2)]
            await start_fake(port=port, vram_bytes=24 * GIB)
            up = await source.read()
        assert all(not s.known for s in down)
        assert down[0].error is not None
        assert down[0].error.startswith(
            f"GET /api/ps from Ollama failed: Cannot connect to host 127.0.0.1:{port}"
        )
        assert up.free_bytes == 24 * GIB
        assert len(events(logs, "gpu_unavailable")) == 1
        assert len(events(logs, "gpu_recovered")) == 1

    async def test_the_first_read_waits_for_the_first_ps(
        self, start_fake: StartFake, session: aiohttp.ClientSession
    ) -> None:
        """Read before the facts poller's first /api/ps, the source gets an answer, not "not read
        yet": the read is made then, once, and the poller's next one is not doubled."""
        fake = await start_fake(vram_bytes=24 * GIB)
        facts = Facts(Upstream(fake.url, session), OllamaSettings())  # type: ignore[attr-defined]
        source = OllamaPsSource(facts.latest_ps, [24 * GIB])
        with capture_logs() as logs:
            first, second = await asyncio.gather(source.read(), source.read())
        assert (first.free_bytes, second.free_bytes) == (24 * GIB, 24 * GIB)
        assert events(logs, "gpu_unavailable") == []
        assert len([r for r in fake.requests if r.path == "/api/ps"]) == 1

    async def test_a_governor_starts_without_a_memory_warning(
        self, start_fake: StartFake, start_proxy: StartProxy
    ) -> None:
        """``source = "ollama"``: the sampler's first sample at start-up sees Ollama's /api/ps."""
        fake = await start_fake(vram_bytes=24 * GIB)
        with capture_logs() as logs:
            proxy = await start_proxy(
                fake.url,  # type: ignore[attr-defined]
                '[gpu]\nsource = "ollama"\nvram_total = "24GiB"\n',
            )
            sampler = proxy.app[MEMORY]
            await eventually(lambda: sampler.snapshot is not None and sampler.snapshot.known, what="a sample")
        assert sampler.snapshot is not None and sampler.snapshot.free_bytes == 24 * GIB
        assert [e for e in logs if e["log_level"] in ("warning", "error")] == []

    def test_totals_are_required(self) -> None:
        """A source with no GPU totals is a programming error."""
        with pytest.raises(ValueError, match="one positive size per GPU"):
            OllamaPsSource(stub_ps({}), [])


# ---------------------------------------------------------------------------- none and auto


class TestNoGpuSource:
    async def test_always_unknown(self) -> None:
        """Policies see no devices and the reason."""
        assert await NoGpuSource().read() == GpuSnapshot(source="none", error="no GPU source configured")


class TestAutoSource:
    async def test_chooses_nvml_when_it_initialises(self) -> None:
        """A working NVML is chosen, and the choice is logged once."""
        source = AutoSource(NvmlSource(None, nvml=FakeNvml()))
        assert source.name == "auto"
        with capture_logs() as logs:
            snapshots = [await source.read() for _ in range(2)]
        assert source.name == "nvml"
        assert all(s.known and s.source == "nvml" for s in snapshots)
        assert [e.get("source") for e in events(logs, "gpu_source_chosen")] == ["nvml"]

    async def test_falls_back_to_none_for_good(self) -> None:
        """Without NVML it settles on none, says why, never warns, and never tries NVML again."""
        nvml = FakeNvml()
        nvml.init_error = FakeNVMLError("Driver Not Loaded")
        source = AutoSource(NvmlSource(None, nvml=nvml))
        with capture_logs() as logs:
            snapshots = [await source.read() for _ in range(3)]
        assert source.name == "none"
        assert {(s.source, s.error) for s in snapshots} == {
            ("none", "source auto found no GPU: NVML unavailable: Driver Not Loaded")
        }
        assert nvml.calls == 1
        assert [(e["source"], e["reason"]) for e in events(logs, "gpu_source_chosen")] == [
            ("none", "NVML unavailable: Driver Not Loaded")
        ]
        assert events(logs, "gpu_unavailable") == []


# ---------------------------------------------------------------------------- GpuSampler


class CountingSource:
    """Returns one GPU with ``free_bytes`` and counts reads; raises ``fail`` when set."""

    name = "counting"

    def __init__(self, free_bytes: int = 8 * GIB) -> None:
        self.free_bytes = free_bytes
        self.reads = 0
        self.fail: Exception | None = None
        self.closed = False
        self.gate: asyncio.Event | None = None

    async def read(self) -> GpuSnapshot:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        device = GpuDevice(0, "fake", 16 * GIB, self.free_bytes, 16 * GIB - self.free_bytes)
        return GpuSnapshot(source=self.name, devices=(device,))

    async def close(self) -> None:
        self.closed = True


class TestGpuSampler:
    def test_unknown_before_the_first_read(self) -> None:
        """Until a read completes, the snapshot is unknown with a reason."""
        sampler = GpuSampler(CountingSource())
        assert sampler.snapshot == GpuSnapshot(source="counting", error="not sampled yet", reserve_bytes=GIB)

    async def test_refresh_stamps_reserve_and_time(self) -> None:
        """A refresh reads once and stamps the reserve and the unix time of the read."""
        sampler = GpuSampler(CountingSource(), reserve_bytes=512 * MIB)
        before = time.time()
        snapshot = await sampler.refresh()
        assert snapshot is sampler.snapshot
        assert snapshot.reserve_bytes == 512 * MIB
        assert snapshot.taken_at >= before
        assert snapshot.free_bytes == 8 * GIB

    async def test_the_request_path_reads_the_cache(self) -> None:
        """Reading snapshot never calls the source."""
        source = CountingSource()
        sampler = GpuSampler(source)
        await sampler.refresh()
        snapshots = {id(sampler.snapshot) for _ in range(1000)}
        assert source.reads == 1
        assert len(snapshots) == 1

    async def test_refreshes_in_the_background(self) -> None:
        """start() reads repeatedly at the interval; stop() ends the task and closes the source."""
        source = CountingSource()
        sampler = GpuSampler(source, interval_s=0.01)
        task = sampler.start()
        assert sampler.start() is task
        await eventually(lambda: source.reads >= 2)
        source.free_bytes = 3 * GIB
        await eventually(lambda: sampler.snapshot.free_bytes == 3 * GIB)
        await sampler.stop()
        assert task.done()
        assert source.closed
        reads = source.reads
        await asyncio.sleep(0.05)
        assert source.reads == reads

    async def test_refresh_during_a_read_reads_again(self) -> None:
        """A refresh that arrives mid-read gets a read that started after it asked."""
        source = CountingSource()
        source.gate = asyncio.Event()
        sampler = GpuSampler(source)
        first = asyncio.create_task(sampler.refresh())
        await eventually(lambda: source.reads == 1)
        second = asyncio.create_task(sampler.refresh())
        await asyncio.sleep(0.01)
        assert source.reads == 1
        source.gate.set()
        await asyncio.gather(first, second)
        assert source.reads == 2

    async def test_a_raising_source_gives_unknown_logged_once(self) -> None:
        """An exception in a read is an unknown snapshot with the reason, logged once per streak."""
        source = CountingSource()
        sampler = GpuSampler(source)
        await sampler.refresh()
        source.fail = RuntimeError("boom")
        with capture_logs() as logs:
            first = await sampler.refresh()
            await sampler.refresh()
            source.fail = None
            back = await sampler.refresh()
        assert not first.known
        assert first.error == "counting read failed: RuntimeError('boom')"
        assert first.reserve_bytes == GIB
        assert back.known
        assert [(e["log_level"], e["source"]) for e in events(logs, "gpu_read_failed")] == [
            ("error", "counting")
        ]
        assert len(events(logs, "gpu_recovered")) == 1

    async def test_a_stale_sample_is_unknown(self) -> None:
        """When no read completed for stale_after_s, the numbers are no longer offered."""
        sampler = GpuSampler(CountingSource(), stale_after_s=0.01)
        await sampler.refresh()
        await asyncio.sleep(0.05)
        snapshot = sampler.snapshot
        assert not snapshot.known
        assert snapshot.error is not None and snapshot.error.startswith("GPU sample is stale: last read")

    def test_rejects_a_bad_interval(self) -> None:
        """A zero interval would spin."""
        with pytest.raises(ValueError, match="interval_s must be > 0"):
            GpuSampler(CountingSource(), interval_s=0)


# ---------------------------------------------------------------------------- config


def parse(**data: Any) -> GpuSettings:
    return parse_gpu_section(Table("gov.toml", data, "gpu"))


class TestParseGpuSection:
    def test_defaults(self) -> None:
        """An empty [gpu] is auto, every GPU, 1 GiB reserve, 0.5 s."""
        assert parse() == GpuSettings("auto", None, (), GIB, 0.5)

    def test_nvml_with_devices_reserve_and_interval(self) -> None:
        """Devices as a list or a CUDA_VISIBLE_DEVICES string; sizes and durations as strings."""
        assert parse(source="nvml", devices="0, 2", reserve="512MiB", interval="250ms") == GpuSettings(
            "nvml", ("0", "2"), (), 512 * MIB, 0.25
        )
        assert parse(devices=[1, "GPU-8f6c-aa"]).devices == ("1", "GPU-8f6c-aa")
        assert parse(reserve=0, interval=2).interval_s == 2.0

    def test_ollama_with_one_or_several_totals(self) -> None:
        """vram_total is one size or one per GPU."""
        assert parse(source="ollama", vram_total="24GiB").vram_total_bytes == (24 * GIB,)
        assert parse(source="ollama", vram_total=["24GiB", 17179869184]).vram_total_bytes == (
            24 * GIB,
            16 * GIB,
        )

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (
                {"source": "cuda"},
                "gov.toml: gpu.source: expected one of 'auto', 'nvml', 'amdgpu', 'apple', 'system', 'ollama', 'none', got 'cuda'",
            ),
            ({"intervall": "1s"}, "gov.toml: unknown key 'intervall' in [gpu]"),
            (
                {"source": "ollama"},
                'gov.toml: gpu.vram_total: missing: source = "ollama" needs the total VRAM of each GPU, e.g. ["24GiB"]',
            ),
            (
                {"vram_total": "24GiB"},
                'gov.toml: gpu.vram_total: only used with source = "ollama"; remove it or set that source',
            ),
            (
                {"source": "ollama", "vram_total": []},
                'gov.toml: gpu.vram_total: expected one size per GPU such as ["24GiB", "24GiB"]',
            ),
            (
                {"source": "ollama", "vram_total": "0GiB"},
                "gov.toml: gpu.vram_total: a GPU's total VRAM must be more than 0",
            ),
            (
                {"source": "ollama", "vram_total": 24.5},
                'gov.toml: gpu.vram_total: expected a size such as "24GiB" or a number of bytes, got a number',
            ),
            (
                {"source": "none", "devices": [0]},
                'gov.toml: gpu.devices: only used with source = "nvml", "amdgpu" or "auto", not \'none\'; remove it',
            ),
            (
                {"devices": True},
                'gov.toml: gpu.devices: expected a list such as [0, 1] or a string such as "0,1", got a boolean',
            ),
            (
                {"devices": []},
                "gov.toml: gpu.devices: expected at least one GPU; leave devices out to use every GPU",
            ),
            (
                {"devices": "0,,1"},
                "gov.toml: gpu.devices: expected GPU indexes such as 0 or UUIDs such as \"GPU-8f6c...\", got ''",
            ),
            (
                {"devices": [-1]},
                'gov.toml: gpu.devices: expected GPU indexes such as 0 or UUIDs such as "GPU-8f6c...", got -1',
            ),
            ({"devices": ["0", 0]}, "gov.toml: gpu.devices: GPU '0' is listed twice"),
            (
                {"reserve": "1G"},
                "gov.toml: gpu.reserve: unknown size unit 'G' in '1G': use B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal)",
            ),
            ({"reserve": -1}, "gov.toml: gpu.reserve: size must not be negative, got -1"),
            ({"interval": "10ms"}, "gov.toml: gpu.interval: expected at least 50ms, got '10ms'"),
        ],
    )
    def test_errors(self, data: dict[str, Any], message: str) -> None:
        """Each mistake is one error naming the file, the key and the fix."""
        with pytest.raises(ConfigError) as caught:
            parse(**data)
        assert str(caught.value) == message

    def test_sources_for_every_host(self) -> None:
        """amdgpu takes card numbers and a sysfs root, system a meminfo path, apple nothing more."""
        assert parse(source="amdgpu", devices=[0, "2"], sysfs_root="/host") == GpuSettings(
            "amdgpu", ("0", "2"), sysfs_root=Path("/host")
        )
        assert parse(source="system", meminfo_path="/host/proc/meminfo").meminfo_path == Path(
            "/host/proc/meminfo"
        )
        assert parse(source="apple") == GpuSettings("apple")
        auto = parse(sysfs_root="/host", meminfo_path="/host/proc/meminfo", devices=["GPU-8f6c-aa"])
        assert (auto.sysfs_root, auto.meminfo_path) == (Path("/host"), Path("/host/proc/meminfo"))

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (
                {"source": "apple", "devices": [0]},
                'gov.toml: gpu.devices: only used with source = "nvml", "amdgpu" or "auto", not \'apple\'; remove it',
            ),
            (
                {"source": "amdgpu", "devices": ["GPU-8f6c-aa"]},
                "gov.toml: gpu.devices: source = \"amdgpu\" selects cards by number (1 for card1), got 'GPU-8f6c-aa'",
            ),
            (
                {"source": "nvml", "sysfs_root": "/host"},
                'gov.toml: gpu.sysfs_root: only used with source = "amdgpu" or "auto", not \'nvml\'; remove it',
            ),
            (
                {"source": "amdgpu", "meminfo_path": "/proc/meminfo"},
                'gov.toml: gpu.meminfo_path: only used with source = "system" or "auto", not \'amdgpu\'; remove it',
            ),
            (
                {"source": "system", "vram_total": "24GiB"},
                'gov.toml: gpu.vram_total: only used with source = "ollama"; remove it or set that source',
            ),
            ({"sysfs_root": "host"}, "gov.toml: gpu.sysfs_root: expected an absolute path, got 'host'"),
            (
                {"meminfo_path": 1},
                'gov.toml: gpu.meminfo_path: expected a path such as "/host", got an integer',
            ),
        ],
    )
    def test_options_that_do_not_apply(self, data: dict[str, Any], message: str) -> None:
        """An option for another source, or a bad path, is one error naming the key and the fix."""
        with pytest.raises(ConfigError) as caught:
            parse(**data)
        assert str(caught.value) == message

    def test_through_parse_config(self) -> None:
        """As the [gpu] section, the settings land in Config.extra["gpu"]."""
        config = parse_config({"gpu": {"source": "none"}}, "gov.toml")
        assert config.gpu == GpuSettings(source="none")
        with pytest.raises(ConfigError, match=r"^gov.toml: gpu: expected a table, got a string$"):
            parse_config({"gpu": "nvml"}, "gov.toml")


class TestBuildSource:
    def test_each_source(self) -> None:
        """The configured kind of source, with its settings; nothing is opened yet."""
        nvml = FakeNvml()

        getter = stub_ps({})
        auto = build_source(GpuSettings(), getter, nvml=nvml)
        assert isinstance(auto, AutoSource)
        chosen = build_source(GpuSettings("nvml", devices=("GPU-aaaa-0000", "1")), getter, nvml=nvml)
        assert isinstance(chosen, NvmlSource)
        assert chosen.devices == ("GPU-aaaa-0000", 1)
        ollama = build_source(GpuSettings("ollama", vram_total_bytes=(24 * GIB,)), getter)
        assert isinstance(ollama, OllamaPsSource)
        assert ollama.vram_total_bytes == (24 * GIB,)
        assert isinstance(build_source(GpuSettings("none"), getter), NoGpuSource)
        assert nvml.calls == 0

    def test_each_host_source(self, tmp_path: Path) -> None:
        """amdgpu, apple and system are built with their settings; nothing is read yet."""
        getter = stub_ps({})
        amdgpu = build_source(GpuSettings("amdgpu", devices=("1",), sysfs_root=tmp_path), getter)
        assert isinstance(amdgpu, AmdgpuSource)
        assert (amdgpu.devices, amdgpu.drm_dir) == ((1,), tmp_path / "sys/class/drm")
        assert isinstance(build_source(GpuSettings("apple"), getter), AppleSource)
        system = build_source(GpuSettings("system", meminfo_path=tmp_path / "meminfo"), getter)
        assert isinstance(system, MeminfoSource) and system.path == tmp_path / "meminfo"

    def test_auto_order_depends_on_the_platform(self) -> None:
        """auto tries NVML, amdgpu, then Apple on macOS or system memory on Linux."""
        kinds = {
            platform: [
                type(c)
                for c in cast(
                    AutoSource, build_source(GpuSettings(), stub_ps({}), platform=platform)
                ).candidates
            ]
            for platform in ("linux", "darwin", "win32")
        }
        assert kinds == {
            "linux": [NvmlSource, AmdgpuSource, MeminfoSource],
            "darwin": [NvmlSource, AmdgpuSource, AppleSource],
            "win32": [NvmlSource, AmdgpuSource],
        }

    def test_sampler_takes_interval_and_reserve(self) -> None:
        """build_sampler wires the settings into the sampler."""
        settings = GpuSettings("none", reserve_bytes=2 * GIB, interval_s=0.25)
        sampler = build_sampler(settings, build_source(settings, stub_ps({})))
        assert (sampler.interval_s, sampler.reserve_bytes, sampler.source.name) == (0.25, 2 * GIB, "none")
