"""The ledger kept in memory: the last results and the changes among them, for a governor without a
results store, and for the newest decisions a store has not committed yet."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from proxy.govern.record import Applied, GovernedRequest
from proxy.ledger.figures import CHANGE_KEYS, change_json, compare, phase
from proxy.ledger.rows import decision_of, point_of
from proxy.names import canonical_model

STATUS_DECISIONS = 50
STATUS_CHANGES = 20
MAX_SERIES_POINTS = 20_000


class MemoryBackend:
    """Results in a bounded ring buffer, each filed under its model's change as the store files it."""

    name = "memory"

    def __init__(self, maxlen: int = 200, max_changes: int = 100) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._changes: deque[dict[str, Any]] = deque(maxlen=max_changes)
        self._current: dict[str, dict[str, Any]] = {}
        self._next_change_id = 1

    def add(self, record: GovernedRequest, fields: Mapping[str, Any] | None = None) -> None:
        """Keep one result, opening a change when the ledger says it opened one."""
        decision = decision_of(record, fields)
        model = decision["model"]
        current = self._current.get(model)
        if current is None or record.change is not None:
            current = {
                "change_id": self._next_change_id,
                "model": model,
                "ts": decision["ts"],
                "from_num_ctx": None if current is None else current["to_num_ctx"],
                "to_num_ctx": record.applied_num_ctx,
                "from_keep_alive": None if current is None else current["to_keep_alive"],
                "to_keep_alive": record.applied_keep_alive,
                "spilled": False,
                "previous_id": None if current is None else current["change_id"],
            }
            self._next_change_id += 1
            self._current[model] = current
            self._changes.append(current)
        if record.spilled is True:
            current["spilled"] = True
        decision["change_id"] = current["change_id"]
        self._events.append(decision)

    def last_applied(self) -> dict[str, Applied]:
        """Nothing survives a restart in memory."""
        return {}

    async def decisions(self, limit: int = STATUS_DECISIONS) -> list[dict[str, Any]]:
        """The newest decisions first."""
        newest = list(self._events)[-limit:] if limit > 0 else []
        return [dict(decision) for decision in reversed(newest)]

    async def changes(
        self,
        *,
        model: str | None = None,
        since_ts: float | None = None,
        limit: int = STATUS_CHANGES,
        figures: bool = True,
    ) -> list[dict[str, Any]]:
        """The newest changes first, each with its before/after figures from the results kept."""
        wanted = [
            change
            for change in reversed(self._changes)
            if (model is None or change["model"] == canonical_model(model))
            and (since_ts is None or change["ts"] >= since_ts)
        ][:limit]
        if not figures:
            return [
                {
                    **{key: change.get(key) for key in CHANGE_KEYS},
                    "model": change["model"],
                    "first_seen": change["previous_id"] is None,
                }
                for change in wanted
            ]
        rows_by_change: dict[int, list[Mapping[str, Any]]] = {}
        for decision in self._events:
            rows_by_change.setdefault(decision["change_id"], []).append(decision)
        out = []
        for change in wanted:
            previous_id = change["previous_id"]
            after = phase(change["change_id"], rows_by_change.get(change["change_id"], ()))
            before = None if previous_id is None else phase(previous_id, rows_by_change.get(previous_id, ()))
            out.append(change_json(compare(change, after, before)))
        return out

    async def points(
        self, *, model: str | None = None, since_ts: float | None = None, limit: int = MAX_SERIES_POINTS
    ) -> list[dict[str, Any]]:
        """Plot points, oldest first, with the model they belong to."""
        chosen = [
            decision
            for decision in self._events
            if (model is None or decision["model"] == canonical_model(model))
            and (since_ts is None or decision["ts"] >= since_ts)
        ][-limit:]
        return [point_of(decision) for decision in chosen]

    async def aclose(self, timeout_s: float | None = None) -> None:
        """Nothing to release."""
