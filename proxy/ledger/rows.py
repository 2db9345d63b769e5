"""The shapes the views read: a decision (one result as the status page lists it) and a plot point."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from proxy.govern.record import GovernedRequest
from proxy.names import canonical_model

POINT_FIELDS = ("ts", "applied_num_ctx", "eval_tokens_per_s", "load_ms", "reloaded", "spilled", "status")
"""What the plots need of each result."""


def decision_of(record: GovernedRequest, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A record as the status page lists it: its flat fields (``fields``, when made already), the
    model keyed as Ollama does."""
    decision = record.fields() if fields is None else dict(fields)
    decision["model"] = canonical_model(record.model)
    decision["ts"] = float(record.ts or time.time())
    return decision


def point_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored or kept result as a plot point, with its model."""
    return {"model": row["model"], **{key: row.get(key) for key in POINT_FIELDS}}
