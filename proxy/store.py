"""The results ledger: one SQLite row per intercepted request, filed under the change it ran under.

``add()`` runs on the event loop, so it only appends to a bounded in-memory queue; one writer
thread owns the only write connection and commits the queue in batches (WAL mode,
``synchronous=NORMAL``).

Crash bound: a committed batch survives a process crash (SIGKILL, OOM kill, ``os._exit``). What is
lost is what was still queued: at most the events of the last ``flush_interval_s`` seconds, and no
more than ``batch_size`` events unless the writer had already fallen behind (then up to
``max_pending``). A power loss may in addition lose the last committed transactions, which is the
price of ``synchronous=NORMAL`` in WAL mode; the database itself stays consistent.

A disk that is full or read-only, or a database that cannot be opened or migrated, never reaches the
caller: the store logs one ``store_degraded`` warning and from then on writes each event to the log
(``result_unstored``, info) instead of the database, until the process restarts.

A *change* is a new applied ``(num_ctx, keep_alive)`` pair for a model. The writer detects changes
itself by comparing each event with the model's last applied pair (seeded from the database on
open, so a restart does not invent a change) and stamps every result with its ``change_id``, so a
before/after comparison is an exact split of rows rather than a guess by timestamp. As in
``results.ChangeTracker``, a dry-run event (its applied values were never sent) or a failed one
(status >= 400) does not open a change: it is filed under the model's current change. Model names
are keyed the way Ollama resolves them (``llama3.1`` is ``llama3.1:latest``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from proxy.results import canonical_model

__all__ = [
    "DB_FILENAME",
    "SCHEMA_VERSION",
    "ResultStore",
    "connect_readonly",
    "default_state_dir",
]

DB_FILENAME = "results.db"

_INT_FIELDS = ("client_num_ctx", "applied_num_ctx", "prompt_tokens", "eval_tokens", "status")
_FLOAT_FIELDS = (
    "load_ms",
    "total_ms",
    "ttfb_ms",
    "prompt_tokens_per_s",
    "eval_tokens_per_s",
)
_KEEP_ALIVE_FIELDS = ("client_keep_alive", "applied_keep_alive")
_OPTIONAL_BOOL_FIELDS = ("reloaded", "spilled", "truncation_suspect")

_RESULT_COLUMNS = (
    "change_id",
    "ts",
    "model",
    "endpoint",
    "client_num_ctx",
    "applied_num_ctx",
    "client_keep_alive",
    "applied_keep_alive",
    "changed_by",
    "load_ms",
    "total_ms",
    "ttfb_ms",
    "prompt_tokens_per_s",
    "eval_tokens_per_s",
    "prompt_tokens",
    "eval_tokens",
    "reloaded",
    "spilled",
    "truncation_suspect",
    "status",
    "done_reason",
    "dry_run",
)
_INSERT_RESULT = (
    f"INSERT INTO results ({', '.join(_RESULT_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _RESULT_COLUMNS)})"
)
_BOOL_COLUMNS = frozenset({"reloaded", "spilled", "truncation_suspect", "dry_run"})

_PRUNE_INTERVAL_S = 300.0
_SECONDS_PER_DAY = 86_400.0


def default_state_dir() -> Path:
    """Where the database lives by default: ``$XDG_STATE_HOME/ollama-governor``."""
    xdg_state_home = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg_state_home) if xdg_state_home else Path.home() / ".local" / "state"
    return base / "ollama-governor"


# --- schema -------------------------------------------------------------------------------------
# Each migration takes the database from version i to i + 1 inside one transaction; the list
# order is the upgrade order. Never edit a released step: append a new one.


def _migrate_to_v1(conn: sqlite3.Connection) -> None:
    """The first released schema: changes and results, without spill or truncation columns."""
    conn.execute(
        """CREATE TABLE changes (
            id INTEGER PRIMARY KEY,
            model TEXT NOT NULL,
            ts REAL NOT NULL,
            from_num_ctx INTEGER,
            to_num_ctx INTEGER,
            from_keep_alive TEXT,
            to_keep_alive TEXT
        )"""
    )
    conn.execute("CREATE INDEX changes_model_id ON changes (model, id)")
    conn.execute(
        """CREATE TABLE results (
            id INTEGER PRIMARY KEY,
            change_id INTEGER NOT NULL REFERENCES changes (id),
            ts REAL NOT NULL,
            model TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            client_num_ctx INTEGER,
            applied_num_ctx INTEGER,
            client_keep_alive TEXT,
            applied_keep_alive TEXT,
            changed_by TEXT,
            load_ms REAL,
            total_ms REAL,
            prompt_tokens_per_s REAL,
            eval_tokens_per_s REAL,
            prompt_tokens INTEGER,
            eval_tokens INTEGER,
            reloaded INTEGER,
            status INTEGER,
            done_reason TEXT,
            dry_run INTEGER NOT NULL DEFAULT 0
        )"""
    )
    conn.execute("CREATE INDEX results_ts ON results (ts)")
    conn.execute("CREATE INDEX results_change_id ON results (change_id)")
    conn.execute("CREATE INDEX results_model_ts ON results (model, ts)")


def _migrate_to_v2(conn: sqlite3.Connection) -> None:
    """Spill and truncation flags and time to first byte; old rows keep NULL (unknown)."""
    conn.execute("ALTER TABLE results ADD COLUMN ttfb_ms REAL")
    conn.execute("ALTER TABLE results ADD COLUMN spilled INTEGER")
    conn.execute("ALTER TABLE results ADD COLUMN truncation_suspect INTEGER")
    conn.execute("ALTER TABLE changes ADD COLUMN spilled INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "UPDATE changes SET spilled = 1 WHERE id IN (SELECT change_id FROM results WHERE spilled = 1)"
    )


_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migrate_to_v1, _migrate_to_v2)
SCHEMA_VERSION = len(_MIGRATIONS)


class _SchemaTooNewError(Exception):
    """The database was written by a newer ollama-governor; touching it could corrupt it."""


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the database up to ``SCHEMA_VERSION``, one committed step at a time."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise _SchemaTooNewError(
            f"database schema version {version} is newer than this ollama-governor supports "
            f"({SCHEMA_VERSION}); upgrade ollama-governor or point it at another database"
        )
    for target_version, step in enumerate(_MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(conn)
            conn.execute(f"PRAGMA user_version = {target_version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def connect_readonly(db_path: Path) -> sqlite3.Connection:
    """A read-only connection for views and reports; FileNotFoundError if there is no database.

    On a read-only file system SQLite cannot create the WAL index it needs to read; no one can be
    writing there, so the file is then opened as immutable instead.
    """
    if not db_path.is_file():
        raise FileNotFoundError(
            f"no results database at {db_path}: ollama-governor creates it on the first request"
        )
    uri = db_path.resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError as exc:
        conn.close()
        if "unable to open" not in str(exc):
            raise
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def _row_to_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A result or change row as plain Python: flags as bool, ``changed_by`` parsed back."""
    out: dict[str, Any] = dict(zip(row.keys(), tuple(row), strict=True))
    for key in _BOOL_COLUMNS.intersection(out):
        if out[key] is not None:
            out[key] = bool(out[key])
    if isinstance(out.get("changed_by"), str):
        with contextlib.suppress(ValueError):
            out["changed_by"] = json.loads(out["changed_by"])
    return out


# --- events -------------------------------------------------------------------------------------


def _keep_alive_text(value: object) -> str | None:
    """keep_alive as stored: strings as given, numbers as their JSON text (``300``, ``-1``)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _normalise(event: Mapping[str, Any]) -> dict[str, Any]:
    """The storable fields of an event as SQLite-ready values; ValueError/TypeError if malformed."""
    model = event.get("model")
    endpoint = event.get("endpoint")
    if not isinstance(model, str) or not model:
        raise ValueError("event has no 'model'")
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError("event has no 'endpoint'")
    row: dict[str, Any] = {
        "change_id": None,
        "ts": float(event["ts"]),
        "model": canonical_model(model),
        "endpoint": endpoint,
        "done_reason": None if event.get("done_reason") is None else str(event["done_reason"]),
        "dry_run": 1 if event.get("dry_run") else 0,
        "changed_by": None,
    }
    for key in _INT_FIELDS:
        value = event.get(key)
        row[key] = None if value is None else int(value)
    for key in _FLOAT_FIELDS:
        value = event.get(key)
        row[key] = None if value is None else float(value)
    for key in _KEEP_ALIVE_FIELDS:
        row[key] = _keep_alive_text(event.get(key))
    for key in _OPTIONAL_BOOL_FIELDS:
        value = event.get(key)
        row[key] = None if value is None else int(bool(value))
    changed_by = event.get("changed_by")
    if changed_by is not None:
        row["changed_by"] = json.dumps(
            [
                {"policy": c.get("policy"), "fields": c.get("fields"), "reason": c.get("reason")}
                for c in changed_by
            ],
            default=str,
        )
    return row


def _is_power_of_ten(n: int) -> bool:
    return n >= 1 and 10 ** (len(str(n)) - 1) == n


@dataclass(frozen=True, slots=True)
class _Applied:
    """The change a model's results currently run under."""

    change_id: int
    num_ctx: int | None
    keep_alive: str | None


class ResultStore:
    """Result events in SQLite, written off the event loop by one background thread.

    Construct it, call ``add()`` from anywhere (the event loop included), and ``close()`` or
    ``await aclose()`` on shutdown so the queue is committed. Reads (``recent_*``) open their own
    connection and see committed rows only; call them through ``asyncio.to_thread``.
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
        self._pending: deque[tuple[int, dict[str, Any]]] = deque()
        self._added_seq = 0  # sequence number of the last event accepted by add()
        self._done_seq = 0  # every event up to here is committed, logged or dropped
        self._flush_requested = False
        self._closing = False
        self._stopped = False
        self._dropped_events = 0
        self._degraded = False

        # Owned by the writer thread only.
        self._current: dict[str, _Applied] = {}
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

    def add(self, event: Mapping[str, Any]) -> None:
        """Queue one result event; never blocks on I/O and never raises."""
        try:
            row = _normalise(event)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            self._log.warning("store_event_rejected", error=repr(exc))
            return
        with self._cond:
            closed = self._closing
            overflow = False
            if not closed:
                if len(self._pending) >= self._max_pending:
                    self._pending.popleft()
                    overflow = True
                self._added_seq += 1
                self._pending.append((self._added_seq, row))
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

    async def aflush(self, timeout_s: float | None = None) -> bool:
        """``flush()`` in a worker thread, for callers on the event loop."""
        return await asyncio.to_thread(self.flush, timeout_s)

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

    def _run(self) -> None:
        """The writer: open, then commit batches until closed. Nothing may escape this thread."""
        conn: sqlite3.Connection | None = None
        try:
            conn = self._open()
            while True:
                batch, last_seq, closing = self._take_pending()
                if batch:
                    conn = self._store_batches(conn, batch)
                with self._cond:
                    self._done_seq = max(self._done_seq, last_seq)
                    self._cond.notify_all()
                if conn is not None and (
                    time.monotonic() - self._last_prune_monotonic_s >= _PRUNE_INTERVAL_S
                ):
                    conn = self._guarded(conn, self._prune)
                if closing and not batch:
                    break
        except Exception as exc:  # a bug here must not kill the thread silently mid-shutdown
            self._degrade(exc)
            with self._cond:
                leftover = [row for _, row in self._pending]
                self._pending.clear()
            self._log_rows(leftover)
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            with self._cond:
                self._stopped = True
                self._done_seq = self._added_seq
                self._cond.notify_all()

    def _take_pending(self) -> tuple[list[dict[str, Any]], int, bool]:
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
            return [row for _, row in taken], last_seq, self._closing

    def _store_batches(
        self, conn: sqlite3.Connection | None, rows: list[dict[str, Any]]
    ) -> sqlite3.Connection | None:
        """Commit rows ``batch_size`` at a time; on a storage error degrade and log the rest."""
        for start in range(0, len(rows), self._batch_size):
            chunk = rows[start : start + self._batch_size]
            if conn is not None:
                try:
                    self._write_batch(conn, chunk)
                    continue
                except (sqlite3.Error, OSError) as exc:
                    self._degrade(exc)
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                    conn = None
            self._log_rows(chunk)
        return conn

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
            _migrate(conn)
            self._current = self._load_current(conn)
            self._prune(conn)
            return conn
        except (sqlite3.Error, OSError, _SchemaTooNewError) as exc:
            self._degrade(exc)
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            return None

    @staticmethod
    def _load_current(conn: sqlite3.Connection) -> dict[str, _Applied]:
        """Each model's newest change, so the first event after a restart is compared with it."""
        rows = conn.execute(
            "SELECT model, id, to_num_ctx, to_keep_alive FROM changes "
            "WHERE id IN (SELECT MAX(id) FROM changes GROUP BY model)"
        ).fetchall()
        return {
            model: _Applied(change_id, num_ctx, keep_alive) for model, change_id, num_ctx, keep_alive in rows
        }

    def _write_batch(self, conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
        """One transaction: new changes first where the applied pair moved, then the results."""
        current = dict(self._current)  # only adopted once the transaction commits
        spilled_change_ids: set[int] = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                model = row["model"]
                num_ctx, keep_alive = row["applied_num_ctx"], row["applied_keep_alive"]
                applied = current.get(model)
                really_applied = not row["dry_run"] and (row["status"] or 0) < 400
                if applied is None or (
                    really_applied and (applied.num_ctx, applied.keep_alive) != (num_ctx, keep_alive)
                ):
                    cursor = conn.execute(
                        "INSERT INTO changes (model, ts, from_num_ctx, to_num_ctx, "
                        "from_keep_alive, to_keep_alive) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            model,
                            row["ts"],
                            None if applied is None else applied.num_ctx,
                            num_ctx,
                            None if applied is None else applied.keep_alive,
                            keep_alive,
                        ),
                    )
                    assert cursor.lastrowid is not None
                    applied = _Applied(cursor.lastrowid, num_ctx, keep_alive)
                    current[model] = applied
                row["change_id"] = applied.change_id
                if row["spilled"]:
                    spilled_change_ids.add(applied.change_id)
            conn.executemany(_INSERT_RESULT, rows)
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

    def _log_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            fields = {
                key: bool(value) if key in _BOOL_COLUMNS else value
                for key, value in row.items()
                if key != "change_id" and value is not None
            }
            self._log.info("result_unstored", **fields)

    # --- reads ----------------------------------------------------------------------------------

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        """Rows of a query on a fresh read-only connection; [] if there is nothing to read yet."""
        try:
            conn = connect_readonly(self._path)
        except (FileNotFoundError, sqlite3.Error):
            return []
        try:
            return [_row_to_dict(row) for row in conn.execute(sql, params)]
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                self._log.warning("store_read_failed", error=str(exc), path=str(self._path))
            return []
        except sqlite3.Error as exc:
            self._log.warning("store_read_failed", error=str(exc), path=str(self._path))
            return []
        finally:
            conn.close()

    def recent_changes(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest changes first, each with the number of results stored under it."""
        return self._read(
            "SELECT changes.*, "
            "(SELECT COUNT(*) FROM results WHERE results.change_id = changes.id) AS requests "
            "FROM changes ORDER BY id DESC LIMIT ?",
            (limit,),
        )

    def last_applied(self) -> dict[str, tuple[Any, Any]]:
        """Each model's current (num_ctx, keep_alive), to seed change tracking after a restart."""
        rows = self._read(
            "SELECT model, to_num_ctx, to_keep_alive FROM changes "
            "WHERE id IN (SELECT MAX(id) FROM changes GROUP BY model)",
            (),
        )
        return {row["model"]: (row["to_num_ctx"], row["to_keep_alive"]) for row in rows}

    def recent_results(
        self, model: str | None = None, since_ts: float | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest committed results first, optionally for one model and from ``since_ts`` on."""
        return self._read(
            "SELECT * FROM results WHERE (?1 IS NULL OR model = ?1) AND (?2 IS NULL OR ts >= ?2) "
            "ORDER BY id DESC LIMIT ?3",
            (None if model is None else canonical_model(model), since_ts, limit),
        )
