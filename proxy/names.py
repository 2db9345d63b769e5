"""Model names as Ollama resolves them: ``llama3.1`` and ``llama3.1:latest`` are one model."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=4096)
def canonical_model(name: str) -> str:
    """The name with its tag, as ``/api/tags`` and ``/api/ps`` print it (``name:latest``).

    Remembered: a governed request asks it a dozen times of the same few names."""
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"
