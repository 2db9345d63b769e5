"""The one ledger: every governed request's record goes through here, once.

It detects changes (``proxy.ledger.changes``), logs the ``result`` and ``change`` events, files
the record in its backend (SQLite, or memory when no store is configured) and hands it to the
other sinks (metrics). The views and ``report`` read what it filed. Each sink runs behind the
error boundary: a failing one is logged, never raised into a request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from proxy.govern.boundary import safecall
from proxy.govern.record import Applied, GovernedRequest
from proxy.ledger.changes import ChangeDetector

log = structlog.get_logger("ollama_governor.results")

Sink = Callable[[GovernedRequest], None]
"""Receives each finished record (after change detection); must not block or do I/O."""


class Backend(Protocol):
    """Where the ledger files records and what the views read back: memory or SQLite."""

    @property
    def name(self) -> str:
        """``memory`` or ``store``, shown on the status page."""
        ...

    def add(self, record: GovernedRequest, fields: Mapping[str, Any] | None = None) -> None:
        """File one record (must not block the event loop); ``fields`` are its ``fields()`` when
        the caller has them already (the ledger made them for the log line)."""
        ...

    def last_applied(self) -> dict[str, Applied]:
        """Each model's current applied pair, to resume change detection after a restart."""
        ...

    async def decisions(self, limit: int = ...) -> list[dict[str, Any]]:
        """The newest decisions first."""
        ...

    async def changes(
        self, *, model: str | None = ..., since_ts: float | None = ..., limit: int = ..., figures: bool = ...
    ) -> list[dict[str, Any]]:
        """The newest changes first, with before/after figures when ``figures``."""
        ...

    async def points(
        self, *, model: str | None = ..., since_ts: float | None = ..., limit: int = ...
    ) -> list[dict[str, Any]]:
        """Plot points, oldest first."""
        ...

    async def aclose(self, timeout_s: float | None = None) -> None:
        """Commit what is queued and release the backend, waiting at most ``timeout_s``."""
        ...


class Ledger:
    """Detects changes, logs, files and fans out each record."""

    def __init__(self, backend: Backend, sinks: Sequence[Sink] = ()) -> None:
        self.backend = backend
        self._steps = [(f"sink {getattr(sink, '__qualname__', repr(sink))}", sink) for sink in sinks]
        """Each sink with its step name for the boundary (named once, not per record)."""
        self._backend_step = f"ledger {backend.name}"
        self.changes = ChangeDetector(safecall("ledger seed", backend.last_applied) or {})

    def record(self, record: GovernedRequest) -> GovernedRequest:
        """Publish one finished request; returns it with the change it opened, if any."""
        transition = self.changes.observe(record)
        if transition is not None:
            record = record._replace(change=transition)
            before = transition.before
            if before is not None:
                for name, old, new in (
                    ("num_ctx", before.num_ctx, transition.after.num_ctx),
                    ("keep_alive", before.keep_alive, transition.after.keep_alive),
                ):
                    if old != new:
                        log.info("change", model=record.model, field=name, **{"from": old, "to": new})
        fields = record.fields()  # a third of the cost of filing a record: made once
        log.info("result", **fields)
        safecall(self._backend_step, self.backend.add, record, fields, model=record.model)
        for step, sink in self._steps:
            safecall(step, sink, record, model=record.model)
        return record

    async def aclose(self, timeout_s: float | None = None) -> None:
        """Commit and close the backend, waiting at most ``timeout_s`` (a stop has a deadline)."""
        await self.backend.aclose(timeout_s)
