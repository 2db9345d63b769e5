"""Frozen records of what the fake did, for tests to assert on (loads, evictions, generations)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

from tests.fakeollama.models import FakeModel


@dataclass
class Recorded:
    """One request as it reached "Ollama" (blob uploads are recorded with an empty body)."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class RunnerOptions:
    """The load-time options of a runner (Ollama's ``api.Runner``), compared by needsReload."""

    num_ctx: int
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int = 0
    draft_num_predict: int = 0


@dataclass(frozen=True)
class RunnerRequest:
    """What a request asks the scheduler for: a model at resolved options (facts §2)."""

    model: FakeModel
    options: RunnerOptions
    num_ctx_auto: bool
    num_batch_auto: bool
    keep_alive_ns: int | None
    context_shift: bool = True


@dataclass
class LoadedState:
    """A loaded runner: what /api/ps reports, plus in-flight count and parallel slots.

    ``size``/``size_vram`` are what /api/ps shows; ``footprint_bytes``/``footprint_vram_bytes``
    what the runner really holds (on 0.33 the two differ for sliding-window models).
    """

    model: FakeModel
    name: str
    num_ctx: int
    size: int
    size_vram: int
    spilled: bool
    keep_alive_ns: int
    expires_at_ns: int
    slots: asyncio.Semaphore = field(repr=False)
    refcount: int = 0
    last_used_ns: int = 0
    key: str = ""
    parallel: int = 1
    num_batch: int = 512
    options: RunnerOptions | None = None
    num_ctx_auto: bool = False
    num_batch_auto: bool = False
    context_shift: bool = True
    footprint_bytes: int = 0
    footprint_vram_bytes: int = 0
    loading: bool = False


@dataclass(frozen=True)
class LoadEvent:
    """One runner start, as the server log's "starting llama-server" line would show it.

    ``reason``: "load" (nothing loaded for that model), "reload" (needsReload: ``changed``
    names the options that differed) or "oom_retry" (the retry after a failed load).
    ``evicted``: the runners unloaded to make room for this one, in order.
    """

    model: str
    num_ctx: int
    parallel: int
    num_batch: int
    size: int
    size_vram: int
    footprint_bytes: int
    spilled: bool
    evicted: tuple[str, ...]
    reason: str
    changed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Eviction:
    """A runner the scheduler unloaded to make room for ``for_model``.

    ``reason``: "fit" (Ollama's estimate plus the batch surcharge exceeded 80% of free VRAM;
    ``predicted_bytes``/``available_bytes`` say by how much), "max_loaded_models", or "oom"
    (every other runner after a failed load, sched.go evictAllAndWait).
    """

    name: str
    for_model: str
    reason: str
    predicted_bytes: int = 0
    available_bytes: int = 0


@dataclass(frozen=True)
class Completion:
    """One generation as the fake ran it: what a client cannot read from the response alone (an
    OpenAI- or Anthropic-style reply carries no durations)."""

    path: str
    model: str
    num_ctx: int
    spilled: bool
    truncated: bool
    prompt_tokens: int
    load_ns: int = 0
    """The load (or the wait for one) as the final chunk reports ``load_duration``."""
    eval_tokens: int = 0
    eval_ns: int = 0
    """Tokens generated and the time they took (``eval_count``, ``eval_duration``); 0 until the
    generation finished, and for one that was cancelled."""
