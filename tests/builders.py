"""Plain data builders for policy tests: keyword-only defaults, so a test names only what it is about.

The defaults describe the seed scenario: gemma3:27b on one 24 GiB GPU with 22.5 GiB free and a
1 GiB reserve, nothing loaded, one parallel slot.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from policies.context import Context, GpuDevice, GpuSnapshot, LoadedModel
from policies.decision import Decision
from policies.memory import GIB
from policies.model import ModelFacts

GEMMA3_27B_WEIGHTS_BYTES = 17_400_000_000
"""gemma3:27b Q4_K_M on disk, about 17.4 GB (16.2 GiB)."""


def gpu(
    *,
    free_gib: float = 22.5,
    total_gib: float = 24.0,
    reserve_gib: float = 1.0,
    source: str = "nvml",
    name: str = "NVIDIA GeForce RTX 4090",
) -> GpuSnapshot:
    """One known GPU with ``free_gib`` of ``total_gib`` free and ``reserve_gib`` kept back."""
    total_bytes = round(total_gib * GIB)
    free_bytes = round(free_gib * GIB)
    device = GpuDevice(
        index=0,
        name=name,
        total_bytes=total_bytes,
        free_bytes=free_bytes,
        used_bytes=total_bytes - free_bytes,
    )
    return GpuSnapshot(
        source=source, devices=(device,), taken_at=1_700_000_000.0, reserve_bytes=round(reserve_gib * GIB)
    )


def unknown_gpu(*, error: str | None = "NVML Shared Library Not Found", source: str = "nvml") -> GpuSnapshot:
    """A GPU sample that read no device, as when NVML is missing."""
    return GpuSnapshot(source=source, devices=(), taken_at=1_700_000_000.0, error=error)


def facts(**overrides: Any) -> ModelFacts:
    """gemma3:27b as ``/api/show`` and ``/api/tags`` describe it (docs/ollama-rules.md §6), with ``overrides``."""
    values: dict[str, Any] = {
        "name": "gemma3:27b",
        "digest": "a418f5838eaf7fd4c8cbd3b0ec7bfd3b0f36e2e4ff4ac2d4f6d3b0b7cc0c2c3d",
        "architecture": "gemma3",
        "context_length": 131072,
        "block_count": 62,
        "embedding_length": 5376,
        "head_count": 32,
        "head_count_kv": 16,
        "key_length": 128,
        "value_length": 128,
        "sliding_window": 1024,
        "vocab_size": 262144,
        "weights_bytes": GEMMA3_27B_WEIGHTS_BYTES,
        "capabilities": ("completion", "vision"),
        "family": "gemma3",
        "parameter_size": "27.4B",
        "quantization_level": "Q4_K_M",
    }
    values.update(overrides)
    return ModelFacts(**values)


def loaded(
    *,
    name: str = "gemma3:27b",
    context_length: int | None = 16384,
    size_gib: float = 20.0,
    vram_gib: float | None = None,
    spilled: bool | None = None,
    digest: str = "a418f5838eaf",
    expires_at: str | None = "2026-11-25T12:05:00Z",
) -> LoadedModel:
    """A model as ``/api/ps`` shows it; entirely on the GPU unless ``vram_gib`` is smaller.

    ``spilled`` defaults to what the sizes say, as the facts provider computes it.
    """
    size_bytes = round(size_gib * GIB)
    vram_bytes = size_bytes if vram_gib is None else round(vram_gib * GIB)
    return LoadedModel(
        name=name,
        digest=digest,
        size_bytes=size_bytes,
        size_vram_bytes=vram_bytes,
        context_length=context_length,
        expires_at=expires_at,
        spilled=vram_bytes < size_bytes if spilled is None else spilled,
    )


def ctx(**overrides: Any) -> Context:
    """A chat request for gemma3:27b with the seed GPU and facts; ``overrides`` set any field."""
    values: dict[str, Any] = {
        "endpoint": "chat",
        "model_name": "gemma3:27b",
        "body": {"model": "gemma3:27b", "messages": []},
        "gpu": gpu(),
        "model": facts(),
        "num_parallel": 1,
    }
    values.update(overrides)
    return Context(**values)


def start(context: Context) -> Decision:
    """The decision the chain starts from: the client's own values."""
    return Decision(num_ctx=context.client_num_ctx, keep_alive=context.client_keep_alive)


def with_model(context: Context, **overrides: Any) -> Context:
    """``context`` with its model facts changed, e.g. ``with_model(c, head_count_kv=None)``."""
    assert context.model is not None
    return dataclasses.replace(context, model=dataclasses.replace(context.model, **overrides))
