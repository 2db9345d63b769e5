"""Free VRAM for a governor that does not run on the GPU host: configured totals minus what Ollama's
own ``/api/ps`` says its models hold (read by the one ``/api/ps`` poller, never polled here)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp

from policies.context import GpuDevice, GpuSnapshot
from policies.memory import format_bytes
from proxy.facts.memory.source import FailureLog

PsReader = Callable[[], Awaitable[object]]
"""Returns Ollama's latest ``/api/ps`` answer (in the app: the facts poller's last read) or raises
why there is none."""
HiddenBytes = Callable[[Mapping[str, Any]], int]
"""For one ``/api/ps`` model entry, the bytes it holds on the GPU but leaves out of ``size_vram``
(Ollama 0.30+ omits a sliding-window model's full-attention cache; docs/ollama-rules.md §7)."""


def _nothing_hidden(entry: Mapping[str, Any]) -> int:
    return 0


class OllamaPsSource:
    """Free VRAM as configured totals minus what ``/api/ps`` says Ollama's models hold.

    For a governor that does not run on the GPU host. What ``size_vram`` leaves out is added back
    by ``hidden_bytes`` (the facts' estimate). Approximations, all on the generous side of
    "free": memory used by anything other than Ollama's models is invisible; Ollama's own
    per-GPU overhead is not counted; and with several GPUs ``/api/ps`` gives one ``size_vram``
    per model, not per GPU, so the sum is subtracted from the GPUs in order, filling the first one
    before the next (Ollama packs a model onto as few GPUs as it can). The summed free memory is
    right; which GPU holds it may not be. Utilization is unknown.
    """

    name = "ollama"

    def __init__(
        self, read_ps: PsReader, vram_total_bytes: Sequence[int], hidden_bytes: HiddenBytes = _nothing_hidden
    ) -> None:
        if not vram_total_bytes or any(total <= 0 for total in vram_total_bytes):
            raise ValueError("vram_total_bytes needs one positive size per GPU")
        self.read_ps = read_ps
        self.hidden_bytes = hidden_bytes
        self.vram_total_bytes = tuple(vram_total_bytes)
        self._failures = FailureLog(self.name)

    async def read(self) -> GpuSnapshot:
        try:
            used_bytes = sum_size_vram(await self.read_ps(), self.hidden_bytes)
        except Exception as exc:
            error = f"GET /api/ps from Ollama failed: {describe_failure(exc)}"
            self._failures.failed(error)
            return GpuSnapshot(source=self.name, kind="gpu", error=error)
        self._failures.succeeded()
        return GpuSnapshot(source=self.name, kind="gpu", devices=self._spread(used_bytes))

    async def close(self) -> None:
        """Nothing to release."""
        return None

    def _spread(self, used_bytes: int) -> tuple[GpuDevice, ...]:
        devices = []
        left_bytes = used_bytes
        for index, total_bytes in enumerate(self.vram_total_bytes):
            on_this_bytes = min(left_bytes, total_bytes)
            left_bytes -= on_this_bytes
            devices.append(
                GpuDevice(
                    index=index,
                    name=f"GPU {index} ({format_bytes(total_bytes)} configured)",
                    total_bytes=total_bytes,
                    free_bytes=total_bytes - on_this_bytes,
                    used_bytes=on_this_bytes,
                )
            )
        return tuple(devices)


def sum_size_vram(answer: object, hidden_bytes: HiddenBytes = _nothing_hidden) -> int:
    """Bytes of GPU memory held by every loaded model, what ``size_vram`` leaves out included
    (``hidden_bytes``); ValueError when the answer is not ``/api/ps``'s."""
    models = answer.get("models") if isinstance(answer, dict) else None
    if not isinstance(models, list):
        raise ValueError("the answer has no 'models' list")
    total_bytes = 0
    for model in models:
        size_vram = model.get("size_vram", 0) if isinstance(model, dict) else None
        if isinstance(size_vram, bool) or not isinstance(size_vram, int) or size_vram < 0:
            raise ValueError(f"a model has no valid 'size_vram': {size_vram!r}")
        total_bytes += size_vram + (hidden_bytes(model) if size_vram else 0)
    return total_bytes


def describe_failure(exc: BaseException) -> str:
    """Why a read of ``/api/ps`` failed, in a few words (an HTTP status or the exception's text)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}".strip()
    return str(exc) or type(exc).__name__
