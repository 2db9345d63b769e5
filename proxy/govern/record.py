"""One governed request as one typed record: what was asked, what was decided, what Ollama
answered, and what was observed after.

The pipeline builds a ``GovernedRequest`` when it decides and completes it once, with Ollama's
``Answer`` and the facts' ``Observation``, when the answer is in; the ledger, the metrics, the
status page and the log all read this one record. Its flat ``fields()`` are the documented shape
of a result in the log, the store and the JSON views. It holds names and numbers only: the
client's body never gets here.

Vocabulary, one name per concept from the body to the store: ``client_num_ctx`` is what the
client sent, ``applied_num_ctx`` what the governor decided (and sent to Ollama, unless
``dry_run``), ``loaded_num_ctx`` what Ollama then held (``/api/ps`` ``context_length``). The
same prefixes apply to ``keep_alive``. ``predicted_*`` is what the governor's model of Ollama's
scheduler expected the request to do, ``observed_*`` what Ollama did.

The records here are made on every request, so they are named tuples: immutable and typed like
a frozen dataclass, but made in one step, where a frozen dataclass sets its fields one call at a
time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
RELOAD_THRESHOLD_MS = 500.0
"""A ``load_duration`` above this means the runner was (re)started. Measured: 1-2 ms (0.30+) or
200-300 ms (0.24) when nothing loads; over a second for even a 270M model when it does."""


class Applied(NamedTuple):
    """The pair a policy decides and a change moves: ``num_ctx`` and ``keep_alive`` (as text)."""

    num_ctx: int | None
    keep_alive: str | None


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of the applied pair for one model; ``before`` is None the first time it is seen."""

    before: Applied | None
    after: Applied

    @property
    def first_seen(self) -> bool:
        """The model's first applied pair since the ledger began: not a change anyone made."""
        return self.before is None


class PolicyChange(NamedTuple):
    """What one policy changed: its name, the fields, why, and its outcome (a stable token)."""

    policy: str
    fields: tuple[str, ...]
    reason: str
    outcome: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form kept in the log and the store."""
        out: dict[str, Any] = {"policy": self.policy, "fields": list(self.fields), "reason": self.reason}
        if self.outcome is not None:
            out["outcome"] = self.outcome
        return out


class Answer(NamedTuple):
    """How Ollama answered: the relay's view (status, first byte, completeness) and the figures
    of its final ``done: true`` object, in ms and tokens/s."""

    status: int
    completed: bool = True
    error: str | None = None
    ttfb_ms: float | None = None
    done_reason: str | None = None
    load_ms: float | None = None
    total_ms: float | None = None
    prompt_tokens: int | None = None
    prompt_tokens_per_s: float | None = None
    eval_tokens: int | None = None
    eval_tokens_per_s: float | None = None

    @classmethod
    def of(
        cls,
        status: int,
        final: Mapping[str, Any] | None,
        *,
        completed: bool = True,
        error: str | None = None,
        ttfb_ms: float | None = None,
    ) -> Answer:
        """The answer with the figures of ``final``: a generation's ``done: true`` object, or an
        embedding's answer (no ``done``, the same duration fields; its tokens are all prompt)."""
        if not final or not (
            final.get("done") is True or ("done" not in final and "total_duration" in final)
        ):
            return cls(status=status, completed=completed, error=error, ttfb_ms=ttfb_ms)
        if "done" not in final:  # /api/embed: the whole time after the load went to the input
            busy_ns = _difference(final.get("total_duration"), final.get("load_duration"))
            return cls(
                status=status,
                completed=completed,
                error=error,
                ttfb_ms=ttfb_ms,
                load_ms=_ms(final.get("load_duration")),
                total_ms=_ms(final.get("total_duration")),
                prompt_tokens=_int(final.get("prompt_eval_count")),
                prompt_tokens_per_s=_rate(final.get("prompt_eval_count"), busy_ns),
            )
        return cls(
            status=status,
            completed=completed,
            error=error,
            ttfb_ms=ttfb_ms,
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
        """Whether Ollama (re)loaded the model, judged from the load time alone."""
        if self.load_ms is None:
            finished = self.done_reason in ("stop", "length") or self.total_ms is not None
            return False if finished else None
        return self.load_ms >= RELOAD_THRESHOLD_MS


class Observation(NamedTuple):
    """What the facts saw Ollama do for a request once it had answered (``proxy.facts.context``)."""

    reloaded: bool | None = None
    """The answer's own word (``Answer.reloaded``), or True when Ollama did not hold the model
    at the context sent: a fast load is still a load."""
    spilled: bool | None = None
    loaded_num_ctx: int | None = None
    truncation_suspect: bool | None = None
    observed_action: str | None = None
    observed_evictions: tuple[str, ...] = ()


class GovernedRequest(NamedTuple):
    """The result of one governed request. Immutable: each stage returns a new one (``_replace``).

    A named tuple, not a frozen dataclass: it is built at the decision and again with the answer,
    thirty-six fields each time, and a frozen dataclass sets its fields one call at a time (that
    was the largest single cost of recording a request); a tuple is made in one step and read
    field by field in C. Equality compares every field, ``change`` included.
    """

    # What was asked.
    ts: float
    model: str
    endpoint: str
    stream: bool = False
    client_num_ctx: int | None = None
    client_keep_alive: str | None = None
    estimated_prompt_tokens: int | None = None
    # What was decided.
    applied_num_ctx: int | None = None
    applied_keep_alive: str | None = None
    changed_by: tuple[PolicyChange, ...] = ()
    policy_errors: tuple[str, ...] = ()
    rejected_by: str | None = None
    dry_run: bool = False
    warm: bool = False
    # The facts the decision saw.
    memory_source: str | None = None
    free_bytes: int | None = None
    # What Ollama's scheduler was expected to do with it (``proxy.facts.context``): reuse, load,
    # reload, evict or spill; and which other models it would unload to make room.
    predicted_action: str | None = None
    predicted_evictions: tuple[str, ...] = ()
    # What Ollama answered: ``Answer``'s fields, in its order.
    status: int | None = None
    completed: bool | None = None
    error: str | None = None
    ttfb_ms: float | None = None
    done_reason: str | None = None
    load_ms: float | None = None
    total_ms: float | None = None
    prompt_tokens: int | None = None
    prompt_tokens_per_s: float | None = None
    eval_tokens: int | None = None
    eval_tokens_per_s: float | None = None
    # What was observed after the answer, what the scheduler did included: ``Observation``'s
    # fields, in its order.
    reloaded: bool | None = None
    spilled: bool | None = None
    loaded_num_ctx: int | None = None
    truncation_suspect: bool | None = None
    observed_action: str | None = None
    observed_evictions: tuple[str, ...] = ()
    # The change of the applied pair this request opened, if any (set by the ledger). Last: it is
    # not one of the result's ``fields()``.
    change: Transition | None = None

    @property
    def applied(self) -> Applied:
        """The applied pair, the unit a change is made of."""
        return Applied(self.applied_num_ctx, self.applied_keep_alive)

    @property
    def really_applied(self) -> bool:
        """Its applied values reached Ollama and were accepted: not a dry run, status below 400."""
        return not self.dry_run and (self.status or 0) < 400

    def finished(self, answer: Answer, observed: Observation | None = None) -> GovernedRequest:
        """This record with Ollama's answer and what was observed after it (without
        ``observed``, ``reloaded`` is the answer's own word). The fields line up, so the record
        is the decided ones, the answer's and the observation's, end to end."""
        if observed is None:
            observed = Observation(reloaded=answer.reloaded)
        return GovernedRequest._make((*self[:_DECIDED], *answer, *observed, self.change))

    def fields(self) -> dict[str, Any]:
        """The flat, JSON-ready form: the documented shape of a result in logs, store and views."""
        out: dict[str, Any] = dict(zip(FIELD_NAMES, self, strict=False))  # not ``change``, the last
        out["changed_by"] = [change.as_dict() for change in self.changed_by]
        out["policy_errors"] = list(self.policy_errors)
        out["predicted_evictions"] = list(self.predicted_evictions)
        out["observed_evictions"] = list(self.observed_evictions)
        return out

    @property
    def prediction_held(self) -> bool | None:
        """Whether Ollama did what was predicted (action and evictions), or None when either is unknown."""
        if self.predicted_action is None or self.observed_action is None:
            return None
        return self.predicted_action == self.observed_action and set(self.predicted_evictions) == set(
            self.observed_evictions
        )


FIELD_NAMES: tuple[str, ...] = GovernedRequest._fields[:-1]
"""Every field of a result, in order; the store's columns and the views' keys are these names."""
_DECIDED = GovernedRequest._fields.index(Answer._fields[0])
"""How many fields are settled before Ollama answers; ``finished`` adds the rest."""
if GovernedRequest._fields[_DECIDED:] != (*Answer._fields, *Observation._fields, "change"):
    raise TypeError("GovernedRequest must end with Answer's fields, Observation's, then change")


def _number(value: object) -> float | None:
    """A finite float from a JSON number (never a bool), else None."""
    if type(value) is int:
        return float(value)
    if type(value) is float:
        return value if math.isfinite(value) else None
    return None


def _int(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _ms(value: object) -> float | None:
    number = _number(value)
    return None if number is None else round(number / NS_PER_MS, 3)


def _difference(total: object, part: object) -> float | None:
    whole, piece = _number(total), _number(part)
    if whole is None:
        return None
    return whole - (piece or 0.0)


def _rate(count: object, duration_ns: object) -> float | None:
    tokens, duration = _number(count), _number(duration_ns)
    if tokens is None or not duration:
        return None
    return round(tokens * NS_PER_S / duration, 2)
