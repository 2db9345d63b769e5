"""The results database's schema, its migrations, and read-only access for views and reports.

Each migration takes the database from version i to i + 1 inside one transaction; the list order
is the upgrade order. Never edit a released step: append a new one.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

DB_FILENAME = "results.db"
BOOL_COLUMNS = frozenset(
    {"reloaded", "spilled", "truncation_suspect", "dry_run", "stream", "warm", "completed"}
)
JSON_COLUMNS = frozenset({"changed_by", "policy_errors", "predicted_evictions", "observed_evictions"})


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


def _migrate_to_v3(conn: sqlite3.Connection) -> None:
    """Every field of the typed result record gets its column (old rows keep NULL: unknown)."""
    for column, kind in (
        ("stream", "INTEGER"),
        ("warm", "INTEGER"),
        ("estimated_prompt_tokens", "INTEGER"),
        ("policy_errors", "TEXT"),
        ("rejected_by", "TEXT"),
        ("memory_source", "TEXT"),
        ("free_bytes", "INTEGER"),
        ("completed", "INTEGER"),
        ("error", "TEXT"),
        ("loaded_num_ctx", "INTEGER"),
    ):
        conn.execute(f"ALTER TABLE results ADD COLUMN {column} {kind}")


def _migrate_to_v4(conn: sqlite3.Connection) -> None:
    """What Ollama's scheduler was predicted to do, and what it did."""
    for column in ("predicted_action", "predicted_evictions", "observed_action", "observed_evictions"):
        conn.execute(f"ALTER TABLE results ADD COLUMN {column} TEXT")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_to_v1,
    _migrate_to_v2,
    _migrate_to_v3,
    _migrate_to_v4,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(Exception):
    """The database was written by a newer ollama-governor; touching it could corrupt it."""


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database up to ``SCHEMA_VERSION``, one committed step at a time."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"database schema version {version} is newer than this ollama-governor supports "
            f"({SCHEMA_VERSION}); upgrade ollama-governor or point it at another database"
        )
    for target_version, step in enumerate(MIGRATIONS[version:], start=version + 1):
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


def row_to_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A result or change row as plain Python: flags as bool, JSON columns parsed back."""
    out: dict[str, Any] = dict(zip(row.keys(), tuple(row), strict=True))
    for key in BOOL_COLUMNS.intersection(out):
        if out[key] is not None:
            out[key] = bool(out[key])
    for key in JSON_COLUMNS.intersection(out):
        if isinstance(out[key], str):
            with contextlib.suppress(ValueError):
                out[key] = json.loads(out[key])
    return out
