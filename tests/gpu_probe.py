"""Probe the real NVML through the governor's sampler and print a JSON report to paste into a note.

Not a test: run it by hand on a GPU host to check what ``NvmlSource`` reads there and how long a
read takes (the sampler reads twice a second, in a worker thread)::

    PYTHONPATH=. python tests/gpu_probe.py [--devices 0,1] [--samples 5] [--interval 0.5]

Needs only aiohttp, structlog and nvidia-ml-py. Exits 0 with a message when there is no GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import structlog

from policies.context import GpuSnapshot
from proxy.facts.memory import GpuSampler, NvmlSource


class TimedNvmlSource(NvmlSource):
    """The real NvmlSource, timing each blocking read (NVML calls only, no thread hop)."""

    def __init__(self, devices: Sequence[int | str] | None) -> None:
        super().__init__(devices)
        self.read_us: list[int] = []

    def read_blocking(self) -> GpuSnapshot:
        started_ns = time.perf_counter_ns()
        snapshot = super().read_blocking()
        self.read_us.append((time.perf_counter_ns() - started_ns) // 1000)
        return snapshot


def _versions() -> dict[str, Any]:
    """Driver, NVML and nvidia-ml-py versions; whatever cannot be read is None."""
    versions: dict[str, Any] = {"driver": None, "nvml": None, "cuda_driver": None}
    try:
        versions["nvidia_ml_py"] = importlib.metadata.version("nvidia-ml-py")
    except importlib.metadata.PackageNotFoundError:
        versions["nvidia_ml_py"] = None
    try:
        pynvml: Any = importlib.import_module("pynvml")
        for key, call in (
            ("driver", pynvml.nvmlSystemGetDriverVersion),
            ("nvml", pynvml.nvmlSystemGetNVMLVersion),
            ("cuda_driver", pynvml.nvmlSystemGetCudaDriverVersion),
        ):
            try:
                value = call()
                versions[key] = value.decode() if isinstance(value, bytes) else value
            except pynvml.NVMLError as exc:
                versions[key] = f"error: {exc}"
    except ImportError:
        pass
    return versions


async def probe(devices: Sequence[str] | None, samples: int, interval_s: float) -> int:
    source = TimedNvmlSource(devices)
    sampler = GpuSampler(source, interval_s=interval_s)
    refresh_us: list[int] = []
    snapshots: list[GpuSnapshot] = []
    try:
        for n in range(samples):
            if n:
                await asyncio.sleep(interval_s)
            started_ns = time.perf_counter_ns()
            snapshot = await sampler.refresh()
            refresh_us.append((time.perf_counter_ns() - started_ns) // 1000)
            if not snapshot.known:
                print(f"no GPU: {snapshot.error}", file=sys.stderr)
                print(json.dumps({"gpu": False, "error": snapshot.error, "devices_selected": devices}))
                return 0
            snapshots.append(snapshot)
        versions = await asyncio.to_thread(_versions)  # NVML is still initialised by the source
    finally:
        await sampler.stop()
    first = snapshots[0]
    steady_us = source.read_us[1:] or source.read_us
    report = {
        "gpu": True,
        "versions": versions,
        "devices_selected": devices,
        "devices": [{"index": d.index, "name": d.name, "total_bytes": d.total_bytes} for d in first.devices],
        "samples": [
            {
                "taken_at": round(s.taken_at, 3),
                "read_us": read_us,
                "refresh_us": total_us,
                "gpus": [[d.index, d.free_bytes, d.used_bytes, d.utilization_pct] for d in s.devices],
            }
            for s, read_us, total_us in zip(snapshots, source.read_us, refresh_us, strict=True)
        ],
        "gpus_columns": ["index", "free_bytes", "used_bytes", "utilization_pct"],
        "first_read_us_includes_nvml_init": source.read_us[0],
        "steady_read_us": {
            "min": min(steady_us),
            "median": int(statistics.median(steady_us)),
            "max": max(steady_us),
        },
    }
    print(_compact(report))
    return 0


def _compact(report: dict[str, Any]) -> str:
    """Valid JSON, one line per top-level key and per sample, so it pastes readably into a note."""
    lines = []
    for key, value in report.items():
        if key == "samples":
            rows = ",\n".join(f"  {json.dumps(sample)}" for sample in value)
            lines.append(f" {json.dumps(key)}: [\n{rows}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", help='GPU indexes or UUIDs, CUDA_VISIBLE_DEVICES style ("0,1")')
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    args = parser.parse_args(argv)
    devices = [part.strip() for part in args.devices.split(",")] if args.devices else None
    # Keep stdout for the JSON: the sampler's own log lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    return asyncio.run(probe(devices, max(args.samples, 1), args.interval))


if __name__ == "__main__":
    sys.exit(main())
