"""The decision a policy chain folds over: what ``num_ctx`` and ``keep_alive`` to send upstream."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from dataclasses import replace as _dc_replace

from policies.duration import KeepAlive, validate_keep_alive
from policies.records import cheap_init, unchecked_maker


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET = _Unset.UNSET


@cheap_init
@dataclass(frozen=True, slots=True)
class Decision:
    """What will be sent to Ollama for one request.

    The chain starts from the client's own values, so a rule with no policies changes nothing.
    Policies never mutate it: they return ``decision.replace(...)`` or ``decision.reject(...)``.
    Every value is checked when a decision is made (by ``replace`` or the constructor), so a
    policy bug surfaces as that policy's error, never as an Ollama 400/500 for the client.

    Attributes:
        num_ctx: ``options.num_ctx`` to send; ``None`` leaves it out (Ollama then uses the
            Modelfile value or its default, which reloads a model loaded at another size).
        keep_alive: ``keep_alive`` to send, as Ollama takes it (seconds or "30m"); ``None``
            leaves it out (the runner keeps the last value it was given, else OLLAMA_KEEP_ALIVE).
        reasons: one readable line per policy that spoke, in chain order, with its figures.
        outcomes: the outcome tokens policies attached (``policies.Outcome`` or their own), in
            chain order; ``outcome`` is the latest.
        rejection: when set, the client gets ``400 {"error": rejection}`` and nothing is sent.
    """

    num_ctx: int | None = None
    keep_alive: KeepAlive | None = None
    reasons: tuple[str, ...] = field(default=())
    outcomes: tuple[str, ...] = field(default=())
    rejection: str | None = None

    def __post_init__(self) -> None:
        _checked_num_ctx(self.num_ctx)
        if self.keep_alive is not None:
            validate_keep_alive(self.keep_alive)
        for reason in self.reasons:  # a loop: most decisions carry none or one (map/all cost more)
            if not isinstance(reason, str):
                raise TypeError(f"reasons must be strings, not {self.reasons!r}")
        for outcome in self.outcomes:
            if not isinstance(outcome, str):
                raise TypeError(f"outcomes must be strings, not {self.outcomes!r}")
        if self.rejection is not None and (not isinstance(self.rejection, str) or not self.rejection):
            raise ValueError(f"a rejection needs a message for the client, not {self.rejection!r}")

    def replace(
        self,
        *,
        num_ctx: int | _Unset | None = UNSET,
        keep_alive: KeepAlive | _Unset | None = UNSET,
        reason: str | None = None,
        outcome: str | None = None,
    ) -> Decision:
        """A new decision with the given fields changed, ``reason`` and ``outcome`` appended.

        Only what changes is checked: the rest was checked when this decision was made (a
        policy chain makes a decision per policy, and each one re-checking every field was a
        tenth of what deciding a request cost).
        """
        if num_ctx is UNSET:
            num_ctx = self.num_ctx
        else:
            _checked_num_ctx(num_ctx)
        if keep_alive is UNSET:
            keep_alive = self.keep_alive
        elif keep_alive is not None:
            validate_keep_alive(keep_alive)
        reasons = self.reasons
        if reason:
            if not isinstance(reason, str):
                raise TypeError(f"reasons must be strings, not {reason!r}")
            reasons = (*reasons, reason)
        outcomes = (*self.outcomes, str(outcome)) if outcome else self.outcomes
        return _unchecked(num_ctx, keep_alive, reasons, outcomes, self.rejection)

    def reject(self, message: str) -> Decision:
        """A decision that refuses the request with ``400 {"error": message}``."""
        return _dc_replace(self, rejection=message)

    @property
    def rejected(self) -> bool:
        """True when a policy refused the request."""
        return self.rejection is not None

    @property
    def outcome(self) -> str | None:
        """The latest outcome a policy attached, or None."""
        return self.outcomes[-1] if self.outcomes else None


_unchecked = unchecked_maker(Decision)
"""A ``Decision`` of values already checked (``Decision.replace``), made without checking them again."""


def _checked_num_ctx(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"num_ctx must be an int or None, not {value!r}")
    if value < 1:
        raise ValueError(f"num_ctx must be positive, not {value}")
