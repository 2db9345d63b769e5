"""Did the applied value change? Answered once, here, for the log, the store, the views and metrics.

A *change* is a new applied ``(num_ctx, keep_alive)`` pair for a model. The first pair a model is
seen with opens its first change (``first_seen``: nobody changed anything). After that, only a
record whose values really reached Ollama (not a dry run, status below 400) can open one; others
are filed under the model's current change. Models are keyed the way Ollama resolves names.
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.govern.record import Applied, GovernedRequest, Transition
from proxy.names import canonical_model

MAX_MODELS = 10_000
"""Model names come from clients; the detector forgets the oldest beyond this many."""


class ChangeDetector:
    """The last applied pair per model, and the transitions between them."""

    def __init__(self, seed: Mapping[str, Applied] | None = None) -> None:
        self._last: dict[str, Applied] = {
            canonical_model(model): applied for model, applied in (seed or {}).items()
        }

    def observe(self, record: GovernedRequest) -> Transition | None:
        """The change ``record`` opens, or None when it runs under the model's current one."""
        key = canonical_model(record.model)
        now = record.applied
        before = self._last.get(key)
        if before is not None and (before == now or not record.really_applied):
            return None
        self._last.pop(key, None)
        self._last[key] = now
        if len(self._last) > MAX_MODELS:
            del self._last[next(iter(self._last))]
        return Transition(before, now)
