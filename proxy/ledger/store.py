"""The results store: one SQLite row per governed request, filed under the change it ran under.

``add()`` runs on the event loop, so it only appends to a bounded in-memory queue; one writer
thread owns the only write connection and commits the queue in batches (WAL mode,
``synchronous=NORMAL``).

Crash bound: a committed batch survives a process crash (SIGKILL, OOM kill, ``os._exit``). What is
lost is what was still queued: at most the results of the last ``flush_interval_s`` seconds, and
no more than ``batch_size`` unless the writer had already fallen behind (then up to
``max_pending``). A power loss may in addition lose the last committed transactions, which is the
price of ``synchronous=NORMAL`` in WAL mode; the database itself stays consistent.

A disk that is full or read-only, or a database that cannot be opened or migrated, never reaches the
caller: the store logs one ``store_degraded`` warning and from then on writes each result to the
log (``result_unstored``, info) instead of the database, until the process restarts. A row the
database refuses (a value out of range) is logged the same way, alone; the writer goes on.

Changes are detected once, by the ledger (``proxy.ledger.changes``): a record that opened one
carries it, and the writer inserts a ``changes`` row for it (or for a model it has never seen),
then stamps every result with its ``change_id``, so a before/after comparison is an exact split
of rows rather than a guess by timestamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from proxy.govern.record import FIELD_NAMES, Applied, GovernedRequest
from proxy.ledger.figures import CHANGE_KEYS, change_json, compare, phase
from proxy.ledger.rows import decision_of, point_of
from proxy.ledger.schema import (
    BOOL_COLUMNS,
    DB_FILENAME,
    JSON_COLUMNS,
    SCHEMA_VERSION,
    SchemaTooNewError,
    connect_readonly,
    migrate,
    row_to_dict,
)
from proxy.names import canonical_model

__all__ = [
    "DB_FILENAME",
    "SCHEMA_VERSION",
    "ResultStore",
    "connect_readonly",
    "default_state_dir",
]

_RESULT_COLUMNS = ("change_id", *FIELD_NAMES)
"""The results table holds every field of the record (``proxy.govern.record``), plus its change."""
_INSERT_RESULT = (
    f"INSERT INTO results ({', '.join(_RESULT_COLUMNS)}) VALUES ({', '.join('?' for _ in _RESULT_COLUMNS)})"
)
_RESULT_VALUES = operator.itemgetter(*_RESULT_COLUMNS)
"""A row's values in column order: positional parameters bind in 24 µs a row, named ones in 35."""
_PRUNE_INTERVAL_S = 300.0
_SECONDS_PER_DAY = 86_400.0
ROWS_PER_PHASE = 1000
"""Before/after figures use each change's latest this-many results: enough for a stable median,
bounded however long a change has run."""
RECENT_DECISIONS = 50


def default_state_dir() -> Path:
    """Where the database lives by default: ``$XDG_STATE_HOME/ollama-governor``."""
    xdg_state_home = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg_state_home) if xdg_state_home else Path.home() / ".local" / "state"
    return base / "ollama-governor"


# --- schema -------------------------------------------------------------------------------------
# Each migration takes the database from version i to i + 1 inside one transaction; the list
# order is the upgrade order. Never edit a released step: append a new one.


def _row(record: GovernedRequest, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record as SQLite-ready values (run on the event loop: plain dict work only), from its
    ``fields()`` when they were made already."""
    row = record.fields() if fields is None else dict(fields)
    for name in JSON_COLUMNS:
        row[name] = json.dumps(row[name]) if row[name] else "[]"  # mostly empty: skip the encoder
    for name in BOOL_COLUMNS:
        if row[name] is not None:
            row[name] = int(row[name])
    row["change_id"] = None
    row["model"] = canonical_model(record.model)
    return row


def _is_power_of_ten(n: int) -> bool:
    return n >= 1 and 10 ** (len(str(n)) - 1) == n


@dataclass(frozen=True, slots=True)
class _Current:
    """The change a model's results currently run under."""

    change_id: int
    applied: Applied


class ResultStore:
    """Results in SQLite, written off the event loop by one background thread.

    Construct it, call ``add()`` from the event loop, and ``close()`` or ``await aclose()`` on
    shutdown so the queue is committed. Reads open their own read-only connection and see
    committed rows only; the async ones run in a worker thread.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_interval_s: float = 1.0,
        batch_size: int = 200,
        retention_days: float = 30.0,
        max_rows: int = 1_000_000,
        max_pending: int = 10_000,
    ) -> None:
        if flush_interval_s <= 0 or batch_size < 1 or max_pending < 1 or max_rows < 1:
            raise ValueError("flush_interval_s must be > 0 and batch_size, max_pending, max_rows >= 1")
        if retention_days <= 0:
            raise ValueError("retention_days must be > 0")
        self._path = Path(path)
        self._flush_interval_s = flush_interval_s
        self._batch_size = batch_size
        self._retention_s = retention_days * _SECONDS_PER_DAY
        self._max_rows = max_rows
        self._max_pending = max_pending
        self._log = structlog.get_logger("ollama_governor.store")

        # Everything below is guarded by _cond; the writer thread never holds it during I/O.
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[tuple[int, dict[str, Any], bool]] = deque()
        self._added_seq = 0  # sequence number of the last event accepted by add()
        self._done_seq = 0  # every event up to here is committed, logged or dropped
        self._flush_requested = False
        self._closing = False
        self._stopped = False
        self._dropped_events = 0
        self._degraded = False

        self._recent: deque[GovernedRequest] = deque(maxlen=RECENT_DECISIONS)
        """The newest results, shown before the writer has committed them."""

        # Owned by the writer thread only.
        self._current: dict[str, _Current] = {}
        self._last_prune_monotonic_s = 0.0

        self._thread = threading.Thread(target=self._run, name="ollama-governor-store", daemon=True)
        self._thread.start()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def degraded(self) -> bool:
        """True once the store has fallen back to logging events instead of storing them."""
        return self._degraded

    @property
    def dropped_events(self) -> int:
        """Events discarded because the queue was full or the store was already closed."""
        return self._dropped_events

    @property
    def pending_events(self) -> int:
        """Events accepted but not yet committed (or logged, when degraded)."""
        with self._cond:
            return len(self._pending)

    # --- input ----------------------------------------------------------------------------------

    def add(self, record: GovernedRequest, fields: Mapping[str, Any] | None = None) -> None:
        """Queue one result (``fields``: its ``fields()``, when made already); never blocks on
        I/O and never raises."""
        self._recent.append(record)
        row = _row(record, fields)
        with self._cond:
            closed = self._closing
            overflow = False
            if not closed:
                if len(self._pending) >= self._max_pending:
                    self._pending.popleft()
                    overflow = True
                self._added_seq += 1
                self._pending.append((self._added_seq, row, record.change is not None))
                if len(self._pending) >= self._batch_size:
                    self._cond.notify_all()
            if closed or overflow:
                self._dropped_events += 1
            dropped_total = self._dropped_events
        # Counted warnings at 1, 10, 100, ... drops: visible, but a flood cannot fill the log.
        if closed and _is_power_of_ten(dropped_total):
            self._log.warning("store_event_after_close", dropped_total=dropped_total, model=row["model"])
        elif overflow and _is_power_of_ten(dropped_total):
            self._log.warning(
                "store_queue_full",
                max_pending=self._max_pending,
                dropped_total=dropped_total,
                hint="the writer cannot keep up; the oldest queued events were dropped",
            )

    def flush(self, timeout_s: float | None = None) -> bool:
        """Block until every event added so far is committed; False on timeout. Not for the loop."""
        with self._cond:
            target_seq = self._added_seq
            self._flush_requested = True
            self._cond.notify_all()
            return (
                self._cond.wait_for(lambda: self._done_seq >= target_seq or self._stopped, timeout_s)
                and self._done_seq >= target_seq
            )

    def close(self, timeout_s: float | None = None) -> None:
        """Commit everything queued and stop the writer; later ``add()`` calls are dropped."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._log.warning("store_close_timeout", timeout_s=timeout_s, pending=self.pending_events)

    async def aclose(self, timeout_s: float | None = None) -> None:
        """``close()`` in a worker thread, for the server's shutdown on the event loop."""
        await asyncio.to_thread(self.close, timeout_s)

    # --- writer thread --------------------------------------------------------------------------

    # --- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        """The writer: open, then commit batches until closed. Nothing may end this thread early:
        a failing batch is logged (and stored row by row where possible), then the loop goes on."""
        conn = self._guarded_open()
        try:
            while True:
                batch, last_seq, closing = self._take_pending()
                try:
                    if batch:
                        conn = self._store_batches(conn, batch)
                    if conn is not None and (
                        time.monotonic() - self._last_prune_monotonic_s >= _PRUNE_INTERVAL_S
                    ):
                        conn = self._guarded(conn, self._prune)
                except Exception as exc:  # a bug: keep the results in the log, keep the thread
                    self._log.error("store_writer_error", error=f"{type(exc).__name__}: {exc}")
                    self._log_rows([row for row, _ in batch], error=f"{type(exc).__name__}: {exc}")
                with self._cond:
                    self._done_seq = max(self._done_seq, last_seq)
                    self._cond.notify_all()
                if closing and not batch:
                    break
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            with self._cond:
                leftover = [row for _, row, _ in self._pending]
                self._pending.clear()
                self._stopped = True
                self._done_seq = self._added_seq
                self._cond.notify_all()
            self._log_rows(leftover)

    def _take_pending(self) -> tuple[list[tuple[dict[str, Any], bool]], int, bool]:
        """Wait for a full batch, the flush interval, a flush request or close; take the queue."""
        deadline = time.monotonic() + self._flush_interval_s
        with self._cond:
            while not self._closing and not self._flush_requested and len(self._pending) < self._batch_size:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                self._cond.wait(remaining_s)
            self._flush_requested = False
            taken = list(self._pending)
            self._pending.clear()
            last_seq = taken[-1][0] if taken else self._done_seq
            return [(row, opens) for _, row, opens in taken], last_seq, self._closing

    def _store_batches(
        self, conn: sqlite3.Connection | None, rows: list[tuple[dict[str, Any], bool]]
    ) -> sqlite3.Connection | None:
        """Commit rows ``batch_size`` at a time; a storage error degrades the store, a row the
        database refuses is logged alone and the others are stored."""
        for start in range(0, len(rows), self._batch_size):
            chunk = rows[start : start + self._batch_size]
            if conn is None:
                self._log_rows([row for row, _ in chunk])
                continue
            try:
                self._write_batch(conn, chunk)
            except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
                if not isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
                    self._degrade(exc)
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                    conn = None
                    self._log_rows([row for row, _ in chunk])
                    continue
                self._write_one_by_one(conn, chunk)
            except (OverflowError, ValueError, TypeError, sqlite3.Error):
                self._write_one_by_one(conn, chunk)
        return conn

    def _write_one_by_one(self, conn: sqlite3.Connection, rows: list[tuple[dict[str, Any], bool]]) -> None:
        for item in rows:
            try:
                self._write_batch(conn, [item])
            except (OverflowError, ValueError, TypeError, sqlite3.Error) as exc:
                self._log_rows([item[0]], error=f"{type(exc).__name__}: {exc}")

    def _guarded(
        self, conn: sqlite3.Connection, step: Callable[[sqlite3.Connection], None]
    ) -> sqlite3.Connection | None:
        """Run a maintenance step; a storage error degrades the store instead of raising."""
        try:
            step(conn)
            return conn
        except (sqlite3.Error, OSError) as exc:
            self._degrade(exc)
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            return None

    def _connect(self) -> sqlite3.Connection:
        """The writer's connection; autocommit so every transaction is an explicit BEGIN."""
        return sqlite3.connect(self._path, timeout=5.0, isolation_level=None)

    def _guarded_open(self) -> sqlite3.Connection | None:
        try:
            return self._open()
        except Exception as exc:  # anything unexpected: degrade, never kill the thread
            self._degrade(exc)
            return None

    def _open(self) -> sqlite3.Connection | None:
        """Create, configure, migrate and prune the database; None (degraded) if that fails."""
        conn: sqlite3.Connection | None = None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            journal_mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(journal_mode).lower() != "wal":
                self._log.info("store_wal_unavailable", journal_mode=journal_mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
            self._current = self._load_current(conn)
            self._prune(conn)
            return conn
        except (sqlite3.Error, OSError, SchemaTooNewError) as exc:
            self._degrade(exc)
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            return None

    @staticmethod
    def _load_current(conn: sqlite3.Connection) -> dict[str, _Current]:
        """Each model's newest change, so results after a restart are filed under it."""
        rows = conn.execute(
            "SELECT model, id, to_num_ctx, to_keep_alive FROM changes "
            "WHERE id IN (SELECT MAX(id) FROM changes GROUP BY model)"
        ).fetchall()
        return {
            model: _Current(change_id, Applied(num_ctx, keep_alive))
            for model, change_id, num_ctx, keep_alive in rows
        }

    def _write_batch(self, conn: sqlite3.Connection, rows: list[tuple[dict[str, Any], bool]]) -> None:
        """One transaction: a change row for each record that opened one, then the results."""
        current = dict(self._current)  # only adopted once the transaction commits
        spilled_change_ids: set[int] = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for row, opens_change in rows:
                model = row["model"]
                applied = Applied(row["applied_num_ctx"], row["applied_keep_alive"])
                filed = current.get(model)
                if filed is None or (opens_change and filed.applied != applied):
                    before = None if filed is None else filed.applied
                    cursor = conn.execute(
                        "INSERT INTO changes (model, ts, from_num_ctx, to_num_ctx, "
                        "from_keep_alive, to_keep_alive) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            model,
                            row["ts"],
                            None if before is None else before.num_ctx,
                            applied.num_ctx,
                            None if before is None else before.keep_alive,
                            applied.keep_alive,
                        ),
                    )
                    assert cursor.lastrowid is not None
                    filed = current[model] = _Current(cursor.lastrowid, applied)
                row["change_id"] = filed.change_id
                if row["spilled"]:
                    spilled_change_ids.add(filed.change_id)
            conn.executemany(_INSERT_RESULT, [_RESULT_VALUES(row) for row, _ in rows])
            conn.executemany(
                "UPDATE changes SET spilled = 1 WHERE id = ?",
                [(change_id,) for change_id in sorted(spilled_change_ids)],
            )
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._current = current

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Drop results past ``retention_days`` or beyond ``max_rows`` (oldest first), then the
        changes left without results, except each model's current one."""
        self._last_prune_monotonic_s = time.monotonic()
        cutoff_ts = time.time() - self._retention_s
        conn.execute("BEGIN IMMEDIATE")
        try:
            by_age = conn.execute("DELETE FROM results WHERE ts < ?", (cutoff_ts,)).rowcount
            row_count = int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
            excess = row_count - self._max_rows
            by_count = 0
            if excess > 0:
                by_count = conn.execute(
                    "DELETE FROM results WHERE id IN (SELECT id FROM results ORDER BY ts, id LIMIT ?)",
                    (excess,),
                ).rowcount
            orphans = conn.execute(
                "DELETE FROM changes WHERE NOT EXISTS "
                "(SELECT 1 FROM results WHERE results.change_id = changes.id) "
                "AND id NOT IN (SELECT MAX(id) FROM changes GROUP BY model)"
            ).rowcount
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if by_age or by_count or orphans:
            self._log.info(
                "store_pruned",
                results_by_age=by_age,
                results_by_count=by_count,
                changes=orphans,
            )

    def _degrade(self, exc: BaseException) -> None:
        """Switch to log-only, warning exactly once per store."""
        if self._degraded:
            return
        self._degraded = True
        self._log.warning(
            "store_degraded",
            error=f"{type(exc).__name__}: {exc}",
            path=str(self._path),
            hint="results are logged instead of stored until ollama-governor restarts",
        )

    def _log_rows(self, rows: list[dict[str, Any]], error: str | None = None) -> None:
        for row in rows:
            fields = {
                key: bool(value) if key in BOOL_COLUMNS else value
                for key, value in row.items()
                if key != "change_id" and value is not None
            }
            if error is not None:
                fields["store_error"] = error
            self._log.info("result_unstored", **fields)

    # --- reads ----------------------------------------------------------------------------------

    name = "store"

    async def decisions(self, limit: int = RECENT_DECISIONS) -> list[dict[str, Any]]:
        """The newest decisions first: those in memory, topped up from the database after a restart."""
        newest = [decision_of(record) for record in reversed(self._recent)][:limit]
        if len(newest) >= limit:
            return newest
        stored = await asyncio.to_thread(self.recent_results, limit=limit)
        oldest_ts = newest[-1]["ts"] if newest else float("inf")
        older = [
            {key: row.get(key) for key in (*FIELD_NAMES, "change_id")}
            for row in stored
            if row["ts"] < oldest_ts
        ]
        return (newest + older)[:limit]

    async def changes(
        self,
        *,
        model: str | None = None,
        since_ts: float | None = None,
        limit: int = 20,
        figures: bool = True,
    ) -> list[dict[str, Any]]:
        """``change_rows`` in a worker thread."""
        return await asyncio.to_thread(
            self.change_rows, model=model, since_ts=since_ts, limit=limit, figures=figures
        )

    async def points(
        self, *, model: str | None = None, since_ts: float | None = None, limit: int = 20_000
    ) -> list[dict[str, Any]]:
        """``point_rows`` in a worker thread."""
        return await asyncio.to_thread(self.point_rows, model=model, since_ts=since_ts, limit=limit)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A fresh read-only connection, or None when there is nothing to read yet."""
        try:
            conn = connect_readonly(self._path)
        except (FileNotFoundError, sqlite3.Error):
            yield None
            return
        try:
            yield conn
        finally:
            conn.close()

    def _query(
        self, conn: sqlite3.Connection | None, sql: str, params: tuple[Any, ...]
    ) -> list[dict[str, Any]]:
        """Rows of a query; [] (logged unless the schema is simply not there yet) on an error."""
        if conn is None:
            return []
        try:
            return [row_to_dict(row) for row in conn.execute(sql, params)]
        except sqlite3.Error as exc:
            if "no such table" not in str(exc):
                self._log.warning("store_read_failed", error=str(exc), path=str(self._path))
            return []

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._reading() as conn:
            return self._query(conn, sql, params)

    def last_applied(self) -> dict[str, Applied]:
        """Each model's current applied pair, so change detection resumes after a restart."""
        rows = self._read(
            "SELECT model, to_num_ctx, to_keep_alive FROM changes "
            "WHERE id IN (SELECT MAX(id) FROM changes GROUP BY model)",
            (),
        )
        return {row["model"]: Applied(row["to_num_ctx"], row["to_keep_alive"]) for row in rows}

    def recent_results(
        self, model: str | None = None, since_ts: float | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest committed results first, optionally for one model and from ``since_ts`` on."""
        return self._read(
            "SELECT * FROM results WHERE (?1 IS NULL OR model = ?1) AND (?2 IS NULL OR ts >= ?2) "
            "ORDER BY id DESC LIMIT ?3",
            (None if model is None else canonical_model(model), since_ts, limit),
        )

    def change_rows(
        self,
        *,
        model: str | None = None,
        since_ts: float | None = None,
        limit: int = 20,
        figures: bool = True,
    ) -> list[dict[str, Any]]:
        """The newest changes first, as the views show them (blocking: call in a worker thread)."""
        with self._reading() as conn:
            return self._changes(conn, model, since_ts, limit, figures)

    def _changes(
        self,
        conn: sqlite3.Connection | None,
        model: str | None,
        since_ts: float | None,
        limit: int,
        figures: bool,
    ) -> list[dict[str, Any]]:
        changes = self._query(
            conn,
            "SELECT c.id AS change_id, c.model, c.ts, c.from_num_ctx, c.to_num_ctx, "
            "c.from_keep_alive, c.to_keep_alive, c.spilled, "
            "(SELECT MAX(p.id) FROM changes p WHERE p.model = c.model AND p.id < c.id) AS previous_id "
            "FROM changes c WHERE (?1 IS NULL OR c.model = ?1) AND (?2 IS NULL OR c.ts >= ?2) "
            "ORDER BY c.id DESC LIMIT ?3",
            (None if model is None else canonical_model(model), since_ts, limit),
        )
        if not figures:
            return [
                {
                    **{key: change.get(key) for key in CHANGE_KEYS},
                    "model": change["model"],
                    "spilled": bool(change["spilled"]),
                    "first_seen": change["previous_id"] is None,
                }
                for change in changes
            ]
        out = []
        for change in changes:
            after = phase(change["change_id"], self._phase_rows(conn, change["change_id"]))
            previous_id = change["previous_id"]
            before = None if previous_id is None else phase(previous_id, self._phase_rows(conn, previous_id))
            out.append(change_json(compare(change, after, before)))
        return out

    def _phase_rows(self, conn: sqlite3.Connection | None, change_id: int) -> list[dict[str, Any]]:
        return self._query(
            conn,
            "SELECT dry_run, reloaded, load_ms, eval_tokens_per_s FROM results "
            "WHERE change_id = ? ORDER BY id DESC LIMIT ?",
            (change_id, ROWS_PER_PHASE),
        )

    def point_rows(
        self, *, model: str | None = None, since_ts: float | None = None, limit: int = 20_000
    ) -> list[dict[str, Any]]:
        """Plot points, oldest first, with their model (blocking: call in a worker thread)."""
        rows = self.recent_results(model=model, since_ts=since_ts, limit=limit)
        return [point_of(row) for row in reversed(rows)]
