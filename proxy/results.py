"""The result of every governed request: what was asked, what was applied, and what it did.

One ``result`` event per request (load time, tokens/s, time to first byte), and a ``change``
event whenever the applied value for a model differs from last time, so a user can see what
every change did. Events carry numbers and names only: prompts and messages never get here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("ollama_governor.results")

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
RELOAD_THRESHOLD_MS = 500.0
"""A ``load_duration`` above this means the runner was (re)started. Measured: 1-2 ms (0.30+) or
200-300 ms (0.24) when nothing loads; over a second for even a 270M model when it does."""

Sink = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class DoneMetrics:
    """The figures of Ollama's final ``done: true`` object, in ms and tokens/s."""

    done_reason: str | None
    load_ms: float | None
    total_ms: float | None
    prompt_tokens: int | None
    prompt_tokens_per_s: float | None
    eval_tokens: int | None
    eval_tokens_per_s: float | None

    @classmethod
    def from_final(cls, final: Mapping[str, Any] | None) -> DoneMetrics | None:
        """Metrics from the final object, or None when it is missing or not a done object."""
        if not final or final.get("done") is not True:
            return None
        return cls(
            done_reason=_str(final.get("done_reason")),
            load_ms=_ms(final.get("load_duration")),
            total_ms=_ms(final.get("total_duration")),
            prompt_tokens=_int(final.get("prompt_eval_count")),
            prompt_tokens_per_s=_rate(final.get("prompt_eval_count"), final.get("prompt_eval_duration")),
            eval_tokens=_int(final.get("eval_count")),
            eval_tokens_per_s=_rate(final.get("eval_count"), final.get("eval_duration")),
        )

    @property
    def reloaded(self) -> bool | None:
        """Whether Ollama (re)loaded the model for this request, judged from load time."""
        if self.load_ms is None:
            return False if self.done_reason in ("stop", "length") else None
        return self.load_ms >= RELOAD_THRESHOLD_MS


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _ms(value: object) -> float | None:
    number = _number(value)
    return None if number is None else round(number / NS_PER_MS, 3)


def _rate(count: object, duration_ns: object) -> float | None:
    tokens, duration = _number(count), _number(duration_ns)
    if tokens is None or not duration:
        return None
    return round(tokens * NS_PER_S / duration, 2)


def canonical_model(name: str) -> str:
    """``llama3.1`` and ``llama3.1:latest`` are one model to Ollama, so they are one here."""
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"


class ChangeTracker:
    """Remembers the last applied (num_ctx, keep_alive) per model to spot changes."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[Any, Any]] = {}

    def seed(self, model: str, num_ctx: int | None, keep_alive: str | None) -> None:
        """Start from a known state (the results store's last rows) after a restart."""
        self._last[canonical_model(model)] = (num_ctx, keep_alive)

    def observe(
        self, model: str, num_ctx: int | None, keep_alive: str | None
    ) -> list[tuple[str, Any, Any]]:
        """The (field, from, to) triples that differ from last time; none the first time."""
        key = canonical_model(model)
        now = (num_ctx, keep_alive)
        before = self._last.get(key)
        self._last[key] = now
        if before is None or before == now:
            return []
        return [
            (name, old, new)
            for name, old, new in zip(("num_ctx", "keep_alive"), before, now, strict=True)
            if old != new
        ]

    def last(self) -> dict[str, tuple[Any, Any]]:
        """A copy of the state, for status pages."""
        return dict(self._last)


class Results:
    """Logs each result and change and hands results to the sinks (store, metrics)."""

    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self.sinks: list[Sink] = list(sinks or [])
        self.changes = ChangeTracker()

    def record(self, event: dict[str, Any]) -> None:
        """Publish one request's result; a failing sink is logged, never raised."""
        if not event.get("dry_run") and event.get("status", 0) < 400:
            for name, old, new in self.changes.observe(
                event["model"], event.get("applied_num_ctx"), event.get("applied_keep_alive")
            ):
                log.info("change", model=event["model"], field=name, **{"from": old, "to": new})
        log.info("result", **event)
        for sink in self.sinks:
            try:
                sink(event)
            except Exception as exc:
                log.error("results_sink_error", sink=repr(sink), error=f"{type(exc).__name__}: {exc}")
