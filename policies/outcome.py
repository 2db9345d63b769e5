"""Outcomes: what a policy's change means, as a value a program can match.

A policy attaches one to the reason it gives (``decision.replace(..., outcome=Outcome.STICKY)``);
the proxy counts, logs and stores it without reading the prose. The values are a stable
interface; policy authors may use their own strings for their own outcomes.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """The outcomes of the built-in policies."""

    STICKY = "sticky"
    """``headroom``: the loaded context already had room; it was kept so Ollama does not reload."""
    REFIT = "refit"
    """``headroom``: the loaded model spills to system RAM; it is reloaded at a context that fits."""
    OVERFLOW = "overflow"
    """``headroom``: the prompt needs more than fits; sent anyway (slower, or capped)."""
    TRUNCATE = "truncate"
    """``headroom``: the prompt needs more than fits; the context that fits was sent, Ollama cuts it."""
    REJECT = "reject"
    """``headroom``: the prompt needs more than fits; the request was refused with a 400."""
    UNKNOWN = "unknown"
    """``headroom``: no memory budget (or no model size): decided on need, sticky and no
    truncation only, nothing capped by memory."""
    WORKING_SET = "working_set"
    """``headroom``: a smaller context (still enough) was sent so Ollama keeps the other loaded
    models instead of unloading one."""
    EVICTS = "evicts"
    """``headroom``: Ollama will unload another (less important) model for this one."""
    PIN = "pin"
    """``keep_alive``: the model is pinned in memory (keep_alive -1)."""
    PRESSURE = "pressure"
    """``keep_alive``: memory is short; keep_alive was shortened."""
    DEFAULT = "default"
    """``keep_alive``: no value was asked; the default was sent."""
