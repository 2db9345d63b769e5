"""Model names as Ollama resolves them: ``llama3.1`` and ``llama3.1:latest`` are one model."""

from __future__ import annotations


def canonical_model(name: str) -> str:
    """The name with its tag, as ``/api/tags`` and ``/api/ps`` print it (``name:latest``)."""
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"
