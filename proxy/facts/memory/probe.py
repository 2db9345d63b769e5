"""One bounded read of the configured memory source, as ``ollama-governor check`` prints it.

``check`` runs on the host the governor will serve on, so it says which source ``auto`` picks
there and what that source reads now; a read that fails or hangs is printed, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib

from policies.context import GpuSnapshot
from policies.memory import format_bytes
from proxy.config.settings import GpuSettings
from proxy.facts.memory import build_source
from proxy.facts.memory.auto import AutoSource
from proxy.facts.memory.source import MemorySource
from proxy.upstream.client import Upstream, new_session

READ_TIMEOUT_S = 5.0
PS_TIMEOUT_S = 2.0
"""``/api/ps`` is asked only by the sources that need it (``ollama``, ``apple``)."""


async def read_once(source: MemorySource, timeout_s: float = READ_TIMEOUT_S) -> GpuSnapshot:
    """Read ``source`` once, then close it; a failure or a hang is a snapshot saying so."""
    try:
        return await asyncio.wait_for(source.read(), timeout_s)
    except TimeoutError:
        return GpuSnapshot(source=source.name, error=f"no answer within {timeout_s:g} s")
    except Exception as exc:
        return GpuSnapshot(source=source.name, error=f"read failed: {exc!r}")
    finally:
        with contextlib.suppress(Exception):
            await source.close()


def describe_reading(configured: str, source: MemorySource, snapshot: GpuSnapshot) -> list[str]:
    """The lines ``check`` prints for one read of ``source``, configured as ``configured``."""
    if isinstance(source, AutoSource):
        lines = [f"memory: source auto chose {source.name} on this host ({snapshot.kind} memory)"]
        lines += [f"  skipped: {reason}" for reason in source.skipped]
        if source.name == "none":
            return [*lines, "  unknown: policies leave num_ctx alone"]
    else:
        lines = [f"memory: source {configured} ({snapshot.kind} memory)"]
    if not snapshot.known:
        return [*lines, f"  unknown: {snapshot.error}"]
    for device in snapshot.devices:
        busy = f", {device.utilization_pct}% busy" if device.utilization_pct is not None else ""
        lines.append(
            f"  {device.index}: {device.name}: {format_bytes(device.free_bytes)} free "
            f"of {format_bytes(device.total_bytes)}{busy}"
        )
    if len(snapshot.devices) > 1:
        free_bytes, total_bytes = snapshot.free_bytes or 0, snapshot.total_bytes or 0
        lines.append(f"  total: {format_bytes(free_bytes)} free of {format_bytes(total_bytes)}")
    return lines


async def check_memory(settings: GpuSettings, upstream_url: str) -> list[str]:
    """Build the configured source, read it once (asking Ollama at ``upstream_url`` for
    ``/api/ps`` if the source needs it) and describe what it read."""
    async with new_session() as session:
        upstream = Upstream(upstream_url, session, retry_window_s=0)

        async def read_ps() -> object:
            return await upstream.get_json("/api/ps", timeout_s=PS_TIMEOUT_S)

        source = build_source(settings, read_ps)
        snapshot = await read_once(source)
        return describe_reading(settings.source, source, snapshot)
