"""Before/after figures of a change, computed one way for the report, the status page and the plots.

Statistics, decided once here:

* ``median`` is the usual median: the middle value, or the mean of the two middle values.
* ``p95`` is nearest-rank: the value at rank ``ceil(0.95 * n)`` of the sorted values, so it is
  always a value that was actually observed (for n < 20 it is the maximum).
* Load figures (``loads``, load medians, p95) count only requests that reloaded the model
  (``reloaded`` true): a warm request reports a few milliseconds of load and would drown the
  cost of a reload.
* Dry-run rows are left out of every figure: their applied values were never sent to Ollama.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def median(values: Sequence[float]) -> float | None:
    """The median, or None when there is nothing to take it of."""
    return statistics.median(values) if values else None


def percentile_nearest_rank(values: Sequence[float], percent: float) -> float | None:
    """Nearest-rank percentile: the ``ceil(percent/100 * n)``-th smallest value, or None."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100.0 * len(ordered)))
    return ordered[rank - 1]


def ratio(after: float | None, before: float | None) -> float | None:
    """after / before, or None when either is unknown or before is 0."""
    if after is None or before is None or before == 0:
        return None
    return after / before


@dataclass(frozen=True)
class PhaseStats:
    """The results stored under one change: the "before" or "after" of a comparison."""

    change_id: int
    requests: int
    loads: int
    load_ms_median: float | None
    eval_tokens_per_s_median: float | None


@dataclass(frozen=True)
class ChangeReport:
    """One change and what it did: after/before ratios above 1 mean "more" (slower loads,
    faster generation)."""

    change_id: int
    model: str
    ts: float
    from_num_ctx: int | None
    to_num_ctx: int | None
    from_keep_alive: str | None
    to_keep_alive: str | None
    spilled: bool
    first_seen: bool
    before: PhaseStats | None
    after: PhaseStats
    eval_tokens_per_s_ratio: float | None
    load_ms_ratio: float | None


@dataclass
class Samples:
    """Accumulates the values one group or one change needs, row by row (dry runs excluded)."""

    requests: int = 0
    load_ms: list[float] = field(default_factory=list)
    loads: int = 0
    prompt_tokens_per_s: list[float] = field(default_factory=list)
    eval_tokens_per_s: list[float] = field(default_factory=list)
    spills: int = 0
    truncation_suspects: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one result row (``reloaded``, ``load_ms``, rates, ``spilled``, ``truncation_suspect``)."""
        self.requests += 1
        if row.get("reloaded"):
            self.loads += 1
            if row.get("load_ms") is not None:
                self.load_ms.append(float(row["load_ms"]))
        if row.get("prompt_tokens_per_s") is not None:
            self.prompt_tokens_per_s.append(float(row["prompt_tokens_per_s"]))
        if row.get("eval_tokens_per_s") is not None:
            self.eval_tokens_per_s.append(float(row["eval_tokens_per_s"]))
        if row.get("spilled"):
            self.spills += 1
        if row.get("truncation_suspect"):
            self.truncation_suspects += 1

    def phase(self, change_id: int) -> PhaseStats:
        """These samples as one change's figures."""
        return PhaseStats(
            change_id=change_id,
            requests=self.requests,
            loads=self.loads,
            load_ms_median=median(self.load_ms),
            eval_tokens_per_s_median=median(self.eval_tokens_per_s),
        )


def phase(change_id: int, rows: Iterable[Mapping[str, Any]]) -> PhaseStats:
    """One change's figures from its result rows (dry runs left out)."""
    samples = Samples()
    for row in rows:
        if not row.get("dry_run"):
            samples.add(row)
    return samples.phase(change_id)


def compare(change: Mapping[str, Any], after: PhaseStats, before: PhaseStats | None) -> ChangeReport:
    """A change row (``change_id``, ``model``, ``ts``, ``from_*``/``to_*``, ``spilled``) with the
    figures of its own results (``after``) and of the change before it (``before``)."""
    return ChangeReport(
        change_id=int(change["change_id"]),
        model=str(change["model"]),
        ts=float(change["ts"]),
        from_num_ctx=change.get("from_num_ctx"),
        to_num_ctx=change.get("to_num_ctx"),
        from_keep_alive=change.get("from_keep_alive"),
        to_keep_alive=change.get("to_keep_alive"),
        spilled=bool(change.get("spilled")),
        first_seen=before is None,
        before=before,
        after=after,
        eval_tokens_per_s_ratio=ratio(
            after.eval_tokens_per_s_median, None if before is None else before.eval_tokens_per_s_median
        ),
        load_ms_ratio=ratio(after.load_ms_median, None if before is None else before.load_ms_median),
    )


def phase_json(stats: PhaseStats | None) -> dict[str, Any] | None:
    """A phase as JSON (report, status page)."""
    if stats is None:
        return None
    return {
        "change_id": stats.change_id,
        "requests": stats.requests,
        "loads": stats.loads,
        "load_ms_median": stats.load_ms_median,
        "eval_tokens_per_s_median": stats.eval_tokens_per_s_median,
    }


CHANGE_KEYS = (
    "ts",
    "from_num_ctx",
    "to_num_ctx",
    "from_keep_alive",
    "to_keep_alive",
    "spilled",
    "first_seen",
)
"""What a change marker on a plot needs."""


def change_json(change: ChangeReport) -> dict[str, Any]:
    """A change with its figures as JSON: the shape of ``report --json`` and ``/governor/status``."""
    return {
        "change_id": change.change_id,
        "model": change.model,
        "ts": change.ts,
        "from_num_ctx": change.from_num_ctx,
        "to_num_ctx": change.to_num_ctx,
        "from_keep_alive": change.from_keep_alive,
        "to_keep_alive": change.to_keep_alive,
        "spilled": change.spilled,
        "first_seen": change.first_seen,
        "before": phase_json(change.before),
        "after": phase_json(change.after),
        "eval_tokens_per_s_ratio": change.eval_tokens_per_s_ratio,
        "load_ms_ratio": change.load_ms_ratio,
    }


@dataclass(frozen=True)
class Surprise:
    """A request where Ollama's scheduler did not do what the governor predicted."""

    ts: float
    model: str
    predicted: str
    predicted_evictions: tuple[str, ...]
    observed: str
    observed_evictions: tuple[str, ...]

    def describe(self) -> str:
        """One line a person reads: "predicted load beside, Ollama evicted nomic-embed-text"."""
        return f"predicted {_action_text(self.predicted, self.predicted_evictions)}, Ollama {_did_text(self)}"


@dataclass(frozen=True)
class PredictionStats:
    """How often the scheduler model predicted what Ollama did, and where it did not."""

    checked: int
    held: int
    surprises: tuple[Surprise, ...]

    @property
    def accuracy(self) -> float | None:
        """Held over checked, or None when nothing was checked."""
        return self.held / self.checked if self.checked else None


def predictions(rows: Iterable[Mapping[str, Any]], *, keep: int = 50) -> PredictionStats:
    """The prediction figures of result rows (both predicted and observed action known); the
    newest ``keep`` surprises, newest first."""
    checked = held = 0
    surprises: list[Surprise] = []
    for row in rows:
        predicted, observed = row.get("predicted_action"), row.get("observed_action")
        if not predicted or not observed:
            continue
        checked += 1
        predicted_evictions = tuple(row.get("predicted_evictions") or ())
        observed_evictions = tuple(row.get("observed_evictions") or ())
        if predicted == observed and set(predicted_evictions) == set(observed_evictions):
            held += 1
            continue
        surprises.append(
            Surprise(
                ts=float(row.get("ts") or 0.0),
                model=str(row.get("model")),
                predicted=str(predicted),
                predicted_evictions=predicted_evictions,
                observed=str(observed),
                observed_evictions=observed_evictions,
            )
        )
    surprises.sort(key=lambda surprise: surprise.ts, reverse=True)
    return PredictionStats(checked, held, tuple(surprises[:keep]))


def predictions_json(stats: PredictionStats) -> dict[str, Any]:
    """The figures as JSON (report, status page)."""
    return {
        "checked": stats.checked,
        "held": stats.held,
        "accuracy": stats.accuracy,
        "surprises": [
            {
                "ts": s.ts,
                "model": s.model,
                "predicted": s.predicted,
                "predicted_evictions": list(s.predicted_evictions),
                "observed": s.observed,
                "observed_evictions": list(s.observed_evictions),
                "text": s.describe(),
            }
            for s in stats.surprises
        ],
    }


_ACTION_WORDS = {
    "reuse": "no load",
    "load": "a load beside the others",
    "reload": "a reload",
    "evict": "a load after evicting",
    "spill": "a spill to system RAM",
}


def _action_text(action: str, evictions: tuple[str, ...]) -> str:
    words = _ACTION_WORDS.get(action, action)
    return f"{words} {', '.join(evictions)}" if action == "evict" and evictions else words


def _did_text(surprise: Surprise) -> str:
    if surprise.observed_evictions:
        did = f"evicted {', '.join(surprise.observed_evictions)}"
        return did + " and spilled" if surprise.observed == "spill" else did
    return {
        "reuse": "loaded nothing",
        "load": "loaded it beside the others",
        "reload": "reloaded it",
        "spill": "spilled it to system RAM",
    }.get(surprise.observed, surprise.observed)
