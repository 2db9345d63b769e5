"""ResultStore: batching off the loop, durability, migrations, degradation, retention, changes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from proxy.govern.record import FIELD_NAMES, GovernedRequest, PolicyChange
from proxy.ledger.ledger import Ledger
from proxy.ledger.store import DB_FILENAME, SCHEMA_VERSION, ResultStore, default_state_dir
from tests.conftest import eventually

REPO_ROOT = Path(__file__).resolve().parents[1]


def event(
    *,
    ts: float | None = None,
    model: str = "gemma3:27b",
    endpoint: str = "chat",
    applied_num_ctx: int | None = 8192,
    applied_keep_alive: str | None = "5m",
    status: int | None = 200,
    **fields: Any,
) -> GovernedRequest:
    """A result as the pipeline records it; keyword overrides for what a test cares about."""
    return GovernedRequest(
        ts=time.time() if ts is None else ts,
        model=model,
        endpoint=endpoint,
        applied_num_ctx=applied_num_ctx,
        applied_keep_alive=applied_keep_alive,
        status=status,
        **fields,
    )


def rows(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Query the database directly, bypassing the store under test."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def count_results(db_path: Path) -> int:
    return int(rows(db_path, "SELECT COUNT(*) FROM results")[0][0])


def warnings_in(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["log_level"] == "warning"]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / DB_FILENAME


@pytest.fixture
def store(db_path: Path) -> Iterator[ResultStore]:
    result_store = ResultStore(db_path, flush_interval_s=3600.0, batch_size=100_000)
    yield result_store
    result_store.close()


@pytest.fixture
def ledger(store: ResultStore) -> Ledger:
    """The ledger in front of the store: it detects the changes the store files."""
    return Ledger(store)


class TestDefaultStateDir:
    def test_xdg_state_home_wins(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """$XDG_STATE_HOME/ollama-governor when the variable is set."""
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
        assert default_state_dir() == tmp_path / "ollama-governor"

    def test_falls_back_to_home(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """~/.local/state/ollama-governor otherwise."""
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        assert default_state_dir() == tmp_path / ".local" / "state" / "ollama-governor"


class TestWrites:
    async def test_many_tasks_adding_concurrently(self, db_path: Path) -> None:
        """Events from 50 interleaved asyncio tasks all land, once each."""
        result_store = ResultStore(db_path, flush_interval_s=0.02, batch_size=37)

        async def producer(task_index: int) -> None:
            for i in range(100):
                result_store.add(event(eval_tokens=task_index * 1000 + i))
                if i % 7 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(*(producer(t) for t in range(50)))
        await result_store.aclose()
        stored = sorted(r[0] for r in rows(db_path, "SELECT eval_tokens FROM results"))
        assert stored == sorted(t * 1000 + i for t in range(50) for i in range(100))
        assert rows(db_path, "SELECT COUNT(*) FROM changes") == [(1,)]

    def test_many_threads_adding_concurrently(self, db_path: Path) -> None:
        """add() is safe from several threads at once."""
        result_store = ResultStore(db_path, flush_interval_s=0.01, batch_size=50)
        start = threading.Barrier(8)

        def producer(thread_index: int) -> None:
            start.wait()
            for i in range(500):
                result_store.add(event(eval_tokens=thread_index * 1000 + i))

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result_store.close()
        assert count_results(db_path) == 8 * 500
        distinct = rows(db_path, "SELECT COUNT(DISTINCT eval_tokens) FROM results")
        assert distinct == [(8 * 500,)]

    async def test_no_sqlite_on_the_event_loop_thread(
        self, db_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every connection is made in the writer thread (and sqlite3 forbids sharing it)."""
        connecting_threads: list[int] = []
        real_connect = sqlite3.connect

        def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            connecting_threads.append(threading.get_ident())
            conn: sqlite3.Connection = real_connect(*args, **kwargs)
            return conn

        monkeypatch.setattr(sqlite3, "connect", recording_connect)
        result_store = ResultStore(db_path, batch_size=10)
        for _ in range(25):
            result_store.add(event())
        await result_store.aclose()
        assert connecting_threads
        assert threading.get_ident() not in connecting_threads
        monkeypatch.undo()
        assert count_results(db_path) == 25

    async def test_add_returns_at_once_while_the_writer_is_stuck(self, db_path: Path) -> None:
        """A stalled disk delays the writer, never the caller of add()."""
        writer_stuck = threading.Event()
        release_writer = threading.Event()

        class StalledDiskStore(ResultStore):
            def _write_batch(
                self, conn: sqlite3.Connection, batch: list[tuple[dict[str, Any], bool]]
            ) -> None:
                writer_stuck.set()
                release_writer.wait(timeout=10.0)
                super()._write_batch(conn, batch)

        result_store = StalledDiskStore(db_path, flush_interval_s=0.01, batch_size=10)
        result_store.add(event())
        assert await asyncio.to_thread(writer_stuck.wait, 10.0)
        started = time.perf_counter()
        for _ in range(1000):
            result_store.add(event())
        elapsed_s = time.perf_counter() - started
        release_writer.set()
        await result_store.aclose()
        assert elapsed_s < 0.25
        assert count_results(db_path) == 1001

    def test_close_flushes_everything(self, db_path: Path) -> None:
        """Nothing is written before the interval, everything is written by close()."""
        result_store = ResultStore(db_path, flush_interval_s=3600.0, batch_size=100_000)
        for _ in range(10):
            result_store.add(event())
        assert result_store.pending_events == 10
        result_store.close()
        assert count_results(db_path) == 10
        result_store.close()  # idempotent

    async def test_a_full_batch_is_written_without_waiting(self, db_path: Path) -> None:
        """batch_size waiting events are committed at once, long before the interval."""
        result_store = ResultStore(db_path, flush_interval_s=3600.0, batch_size=5)
        for _ in range(5):
            result_store.add(event())
        try:
            await eventually(lambda: len(result_store.recent_results(limit=10)) == 5, timeout_s=10.0)
        finally:
            result_store.close()

    async def test_the_interval_flushes_a_partial_batch(self, db_path: Path) -> None:
        """A lone event is committed after flush_interval_s."""
        result_store = ResultStore(db_path, flush_interval_s=0.05, batch_size=100)
        result_store.add(event())
        try:
            await eventually(lambda: len(result_store.recent_results(limit=10)) == 1, timeout_s=10.0)
        finally:
            result_store.close()

    def test_flush_commits_what_was_added(self, store: ResultStore, db_path: Path) -> None:
        """flush() returns once everything added before it is committed."""
        for _ in range(3):
            store.add(event())
        assert store.flush(timeout_s=10.0)
        assert count_results(db_path) == 3

    def test_unknown_fields_are_stored_nowhere(self, db_path: Path) -> None:
        """The results table holds the record's fields and nothing else: no column for a prompt."""
        result_store = ResultStore(db_path)
        with pytest.raises(TypeError):
            event(prompt="TOP-SECRET-PROMPT")
        result_store.add(event())
        result_store.close()
        assert count_results(db_path) == 1
        columns = {r[1] for r in rows(db_path, "PRAGMA table_info(results)")}
        assert columns == {"id", "change_id", *FIELD_NAMES}

    def test_fields_round_trip(self, store: ResultStore) -> None:
        """Every documented field comes back with its type; changed_by as a list of dicts."""
        changed_by = [{"policy": "static", "fields": ["num_ctx"], "reason": "cap at 8192"}]
        store.add(
            event(
                client_num_ctx=131072,
                client_keep_alive="-1",
                changed_by=(PolicyChange("static", ("num_ctx",), "cap at 8192"),),
                load_ms=4100.5,
                total_ms=9000.0,
                ttfb_ms=4200.0,
                prompt_tokens_per_s=850.0,
                eval_tokens_per_s=9.8,
                prompt_tokens=1200,
                eval_tokens=300,
                reloaded=True,
                spilled=False,
                truncation_suspect=True,
                done_reason="stop",
                dry_run=True,
            )
        )
        assert store.flush(timeout_s=10.0)
        [result] = store.recent_results(limit=5)
        assert result["changed_by"] == changed_by
        assert result["client_num_ctx"] == 131072
        assert result["applied_num_ctx"] == 8192
        assert result["client_keep_alive"] == "-1"
        assert result["applied_keep_alive"] == "5m"
        assert (result["load_ms"], result["ttfb_ms"], result["eval_tokens_per_s"]) == (
            4100.5,
            4200.0,
            9.8,
        )
        assert (result["reloaded"], result["spilled"], result["truncation_suspect"]) == (
            True,
            False,
            True,
        )
        assert result["dry_run"] is True
        assert result["done_reason"] == "stop"
        assert "prompt" not in result

    def test_numeric_keep_alive_is_stored_as_json_text(self, store: ResultStore) -> None:
        """keep_alive may travel as a number; it is stored as its JSON text."""
        store.add(event(applied_keep_alive=300))  # type: ignore[arg-type]
        assert store.flush(timeout_s=10.0)
        assert store.recent_results(limit=1)[0]["applied_keep_alive"] == "300"

    def test_a_row_sqlite_refuses_is_logged_and_the_writer_goes_on(self, db_path: Path) -> None:
        """A value SQLite cannot hold (an integer past 64 bits) loses that row to the log, alone;
        the rows around it, and every later one, are stored."""
        result_store = ResultStore(db_path, flush_interval_s=0.01, batch_size=10)
        with structlog.testing.capture_logs() as logs:
            result_store.add(event(eval_tokens=1))
            result_store.add(event(eval_tokens=2, client_num_ctx=10**30))
            result_store.add(event(eval_tokens=3))
            assert result_store.flush(timeout_s=10.0)
            result_store.add(event(eval_tokens=4))
            result_store.close()
        assert [r[0] for r in rows(db_path, "SELECT eval_tokens FROM results ORDER BY id")] == [1, 3, 4]
        [unstored] = [entry for entry in logs if entry["event"] == "result_unstored"]
        assert unstored["eval_tokens"] == 2 and "OverflowError" in unstored["store_error"]
        assert not result_store.degraded

    def test_queue_full_drops_oldest_with_counted_warnings(self, db_path: Path) -> None:
        """Past max_pending the oldest events go; warnings at 1, 10, 100 ... drops."""
        result_store = ResultStore(db_path, flush_interval_s=3600.0, batch_size=100_000, max_pending=10)
        with structlog.testing.capture_logs() as logs:
            for i in range(25):
                result_store.add(event(eval_tokens=i))
            result_store.close()
        assert result_store.dropped_events == 15
        assert [(w["event"], w["dropped_total"]) for w in warnings_in(logs)] == [
            ("store_queue_full", 1),
            ("store_queue_full", 10),
        ]
        stored = [r[0] for r in rows(db_path, "SELECT eval_tokens FROM results ORDER BY id")]
        assert stored == list(range(15, 25))

    def test_add_after_close_is_dropped_quietly(self, db_path: Path) -> None:
        """A request finishing after shutdown cannot raise; its event is counted as dropped."""
        result_store = ResultStore(db_path)
        result_store.close()
        with structlog.testing.capture_logs() as logs:
            result_store.add(event())
            result_store.add(event())
        assert result_store.dropped_events == 2
        assert [w["event"] for w in warnings_in(logs)] == ["store_event_after_close"]


CRASHING_CHILD = """
import os, signal, sys, time
from pathlib import Path
from proxy.govern.record import GovernedRequest
from proxy.ledger.store import ResultStore

store = ResultStore(Path(sys.argv[1]), flush_interval_s=3600.0, batch_size=100_000)
now = time.time()
for i in range(50):
    store.add(GovernedRequest(ts=now + i, model="m", endpoint="chat", applied_num_ctx=8192, eval_tokens=i))
assert store.flush(timeout_s=10.0)
for i in range(50, 80):
    store.add(GovernedRequest(ts=now + i, model="m", endpoint="chat", applied_num_ctx=8192, eval_tokens=i))
os.kill(os.getpid(), signal.SIGKILL)
"""


class TestCrashRecovery:
    def test_sigkill_loses_only_the_unflushed_batch(self, db_path: Path) -> None:
        """Every committed event survives SIGKILL; only the queued batch is lost."""
        completed = subprocess.run(
            [sys.executable, "-c", CRASHING_CHILD, str(db_path)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert completed.returncode == -signal.SIGKILL, completed.stderr.decode()
        reopened = ResultStore(db_path)
        reopened.add(event(model="m", applied_num_ctx=8192, applied_keep_alive=None))
        reopened.close()
        stored = [r[0] for r in rows(db_path, "SELECT eval_tokens FROM results ORDER BY id")]
        assert stored == [*range(50), None]
        assert rows(db_path, "PRAGMA integrity_check") == [("ok",)]
        assert rows(db_path, "SELECT COUNT(*) FROM changes") == [(1,)]


V1_DDL = [
    """CREATE TABLE changes (
        id INTEGER PRIMARY KEY, model TEXT NOT NULL, ts REAL NOT NULL,
        from_num_ctx INTEGER, to_num_ctx INTEGER, from_keep_alive TEXT, to_keep_alive TEXT)""",
    "CREATE INDEX changes_model_id ON changes (model, id)",
    """CREATE TABLE results (
        id INTEGER PRIMARY KEY, change_id INTEGER NOT NULL REFERENCES changes (id),
        ts REAL NOT NULL, model TEXT NOT NULL, endpoint TEXT NOT NULL,
        client_num_ctx INTEGER, applied_num_ctx INTEGER,
        client_keep_alive TEXT, applied_keep_alive TEXT, changed_by TEXT,
        load_ms REAL, total_ms REAL, prompt_tokens_per_s REAL, eval_tokens_per_s REAL,
        prompt_tokens INTEGER, eval_tokens INTEGER, reloaded INTEGER, status INTEGER,
        done_reason TEXT, dry_run INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX results_ts ON results (ts)",
    "CREATE INDEX results_change_id ON results (change_id)",
    "CREATE INDEX results_model_ts ON results (model, ts)",
    "PRAGMA user_version = 1",
]


def build_v1_database(db_path: Path) -> None:
    """A database as the first release wrote it, with one change and two results."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path)
    for statement in V1_DDL:
        conn.execute(statement)
    now = time.time()
    conn.execute("INSERT INTO changes VALUES (1, 'gemma3:27b', ?, NULL, 8192, NULL, '5m')", (now - 60,))
    conn.executemany(
        "INSERT INTO results (change_id, ts, model, endpoint, applied_num_ctx, "
        "applied_keep_alive, load_ms, reloaded) VALUES (1, ?, 'gemma3:27b', 'chat', 8192, '5m', ?, ?)",
        [(now - 60, 4000.0, 1), (now - 30, 5.0, 0)],
    )
    conn.commit()
    conn.close()


class TestMigration:
    def test_version_1_is_migrated_in_place(self, db_path: Path) -> None:
        """Old rows survive, the new columns appear as NULL, the version becomes current."""
        build_v1_database(db_path)
        result_store = ResultStore(db_path)
        result_store.add(event(spilled=True, truncation_suspect=False, ttfb_ms=12.5))
        result_store.close()
        assert not result_store.degraded
        assert rows(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION == 4
        assert rows(
            db_path, "SELECT load_ms, spilled, truncation_suspect, ttfb_ms FROM results ORDER BY id"
        ) == [(4000.0, None, None, None), (5.0, None, None, None), (None, 1, 0, 12.5)]
        # Same applied pair as the migrated change: no new change, and its spill flag is set.
        assert rows(db_path, "SELECT id, spilled FROM changes") == [(1, 1)]

    def test_a_newer_schema_is_left_untouched(self, db_path: Path) -> None:
        """A database from a newer release degrades the store instead of being rewritten."""
        db_path.parent.mkdir(parents=True)
        conn = sqlite3.connect(db_path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        with structlog.testing.capture_logs() as logs:
            result_store = ResultStore(db_path)
            result_store.add(event())
            result_store.close()
        assert result_store.degraded
        assert [w["event"] for w in warnings_in(logs)] == ["store_degraded"]
        assert "newer" in warnings_in(logs)[0]["error"]
        assert rows(db_path, "PRAGMA user_version") == [(99,)]


class TestDegraded:
    def assert_degrades_once(self, open_store: Callable[[], ResultStore], events: int = 300) -> str:
        """Open, add events, close, and return the error of the one store_degraded warning."""
        with structlog.testing.capture_logs() as logs:
            result_store = open_store()  # inside: the writer may fail before add() is called
            for _ in range(events):
                result_store.add(event())
            result_store.close()
        assert result_store.degraded
        assert [w["event"] for w in warnings_in(logs)] == ["store_degraded"]
        unstored = [entry for entry in logs if entry["event"] == "result_unstored"]
        assert unstored
        assert unstored[0]["model"] == "gemma3:27b"
        return str(warnings_in(logs)[0]["error"])

    def test_unopenable_path(self, tmp_path: Path) -> None:
        """A path whose parent is a file cannot be created: log-only, one warning."""
        (tmp_path / "not-a-dir").write_text("")
        self.assert_degrades_once(lambda: ResultStore(tmp_path / "not-a-dir" / DB_FILENAME))

    def test_not_a_database(self, db_path: Path) -> None:
        """A file that is not SQLite degrades the store and is left as it was."""
        db_path.parent.mkdir(parents=True)
        db_path.write_bytes(b"this is not a database" * 100)
        self.assert_degrades_once(lambda: ResultStore(db_path))
        assert db_path.read_bytes() == b"this is not a database" * 100

    def test_read_only_directory(self, db_path: Path) -> None:
        """A read-only state directory degrades the store (as root, which ignores permissions,
        the directory is made read-only by a bind mount in a private mount namespace)."""
        db_path.parent.mkdir(parents=True)
        if os.geteuid() != 0:
            db_path.parent.chmod(0o500)
            try:
                self.assert_degrades_once(lambda: ResultStore(db_path))
            finally:
                db_path.parent.chmod(0o700)
            return
        child = (
            "import json, structlog, sys\n"
            "from pathlib import Path\n"
            "from proxy.govern.record import GovernedRequest\n"
            "from proxy.ledger.store import ResultStore\n"
            "with structlog.testing.capture_logs() as logs:\n"
            "    store = ResultStore(Path(sys.argv[1]))\n"
            "    store.add(GovernedRequest(ts=1.0, model='gemma3:27b', endpoint='chat', status=200))\n"
            "    store.close()\n"
            "print(json.dumps({'degraded': store.degraded, 'events': [e['event'] for e in logs]}))\n"
        )
        directory = str(db_path.parent)
        script = (
            f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory} && "
            f'exec {sys.executable} -c "$0" {db_path}'
        )
        done = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script, child],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert done.returncode == 0, done.stderr
        outcome = json.loads(done.stdout.splitlines()[-1])
        assert outcome["degraded"] is True
        assert outcome["events"].count("store_degraded") == 1
        assert "result_unstored" in outcome["events"]
        assert not db_path.exists()

    def test_disk_full_while_running(self, db_path: Path) -> None:
        """SQLITE_FULL during a batch switches to log-only with one warning."""

        class FullDiskStore(ResultStore):
            def _connect(self) -> sqlite3.Connection:
                conn = super()._connect()
                conn.execute("PRAGMA max_page_count = 12")  # room for the schema only
                return conn

        error = self.assert_degrades_once(
            lambda: FullDiskStore(db_path, flush_interval_s=0.01, batch_size=20), events=2000
        )
        assert "full" in error
        assert 0 < count_results(db_path) < 2000


class TestRetention:
    def test_results_older_than_retention_are_pruned_on_open(self, db_path: Path) -> None:
        """Age bound: rows past retention_days are gone after the next open."""
        now = time.time()
        first = ResultStore(db_path, retention_days=30.0)
        first.add(event(ts=now - 40 * 86_400, eval_tokens=1))
        first.add(event(ts=now - 20 * 86_400, eval_tokens=2))
        first.add(event(ts=now, eval_tokens=3))
        first.close()
        assert count_results(db_path) == 3
        ResultStore(db_path, retention_days=30.0).close()
        assert [r[0] for r in rows(db_path, "SELECT eval_tokens FROM results")] == [2, 3]

    def test_rows_beyond_max_rows_are_pruned_oldest_first(self, db_path: Path) -> None:
        """Count bound: only the newest max_rows survive; emptied changes go too."""
        now = time.time()
        first = ResultStore(db_path)
        ledger = Ledger(first)
        for i in range(10):
            ledger.record(event(ts=now + i, applied_num_ctx=8192, eval_tokens=i))
        for i in range(10, 30):
            ledger.record(event(ts=now + i, applied_num_ctx=16384, eval_tokens=i))
        first.close()
        assert rows(db_path, "SELECT COUNT(*) FROM changes") == [(2,)]
        ResultStore(db_path, max_rows=15).close()
        stored = [r[0] for r in rows(db_path, "SELECT eval_tokens FROM results ORDER BY id")]
        assert stored == list(range(15, 30))
        assert rows(db_path, "SELECT to_num_ctx FROM changes") == [(16384,)]

    def test_the_current_change_survives_losing_all_its_results(self, db_path: Path) -> None:
        """A model's current change stays, so the next restart does not invent a change."""
        old = ResultStore(db_path)
        old.add(event(ts=time.time() - 100 * 86_400))
        old.close()
        pruned = ResultStore(db_path, retention_days=30.0)
        pruned.add(event())
        pruned.close()
        assert count_results(db_path) == 1
        assert rows(db_path, "SELECT id FROM changes") == [(1,)]


class TestChanges:
    def test_back_and_forth_is_three_changes(self, store: ResultStore, ledger: Ledger, db_path: Path) -> None:
        """8192 -> 16384 -> 8192 makes three changes, each result filed under its own."""
        for num_ctx in (8192, 8192, 16384, 16384, 16384, 8192):
            ledger.record(event(applied_num_ctx=num_ctx))
        store.close()
        assert rows(
            db_path,
            "SELECT id, from_num_ctx, to_num_ctx, from_keep_alive, to_keep_alive FROM changes ORDER BY id",
        ) == [
            (1, None, 8192, None, "5m"),
            (2, 8192, 16384, "5m", "5m"),
            (3, 16384, 8192, "5m", "5m"),
        ]
        assert rows(db_path, "SELECT change_id FROM results ORDER BY id") == [
            (1,),
            (1,),
            (2,),
            (2,),
            (2,),
            (3,),
        ]

    def test_models_are_tracked_separately(self, store: ResultStore, ledger: Ledger, db_path: Path) -> None:
        """Interleaved models do not create changes for each other."""
        for model in ("a:1b", "b:2b", "a:1b", "b:2b"):
            ledger.record(event(model=model))
        store.close()
        assert rows(db_path, "SELECT model FROM changes ORDER BY id") == [("a:1b",), ("b:2b",)]

    def test_keep_alive_alone_is_a_change(self, store: ResultStore, ledger: Ledger, db_path: Path) -> None:
        """A new keep_alive at the same num_ctx is a change too."""
        ledger.record(event(applied_keep_alive="5m"))
        ledger.record(event(applied_keep_alive="30m"))
        store.close()
        assert rows(db_path, "SELECT from_keep_alive, to_keep_alive FROM changes") == [
            (None, "5m"),
            ("5m", "30m"),
        ]

    def test_restart_does_not_invent_a_change(self, db_path: Path) -> None:
        """After a restart the same pair continues the change; a new pair starts from the old."""
        first = ResultStore(db_path)
        Ledger(first).record(event(applied_num_ctx=8192))
        first.close()
        second = ResultStore(db_path)
        resumed = Ledger(second)
        resumed.record(event(applied_num_ctx=8192))
        resumed.record(event(applied_num_ctx=32768))
        second.close()
        assert rows(db_path, "SELECT id, from_num_ctx, to_num_ctx FROM changes") == [
            (1, None, 8192),
            (2, 8192, 32768),
        ]
        assert rows(db_path, "SELECT change_id FROM results ORDER BY id") == [(1,), (1,), (2,)]

    def test_dry_run_and_failed_requests_open_no_change(
        self, store: ResultStore, ledger: Ledger, db_path: Path
    ) -> None:
        """Values that never reached Ollama, or a failed request, stay under the current change."""
        ledger.record(event(applied_num_ctx=8192))
        ledger.record(event(applied_num_ctx=65536, dry_run=True))
        ledger.record(event(applied_num_ctx=65536, status=502))
        ledger.record(event(applied_num_ctx=8192))
        store.close()
        assert rows(db_path, "SELECT id, to_num_ctx FROM changes") == [(1, 8192)]
        assert rows(db_path, "SELECT change_id FROM results") == [(1,)] * 4

    def test_a_model_first_seen_in_dry_run_still_gets_a_change(
        self, store: ResultStore, ledger: Ledger, db_path: Path
    ) -> None:
        """Every result needs a change, so the first one is opened whatever the event."""
        ledger.record(event(applied_num_ctx=65536, dry_run=True))
        ledger.record(event(applied_num_ctx=8192))
        store.close()
        assert rows(db_path, "SELECT from_num_ctx, to_num_ctx FROM changes ORDER BY id") == [
            (None, 65536),
            (65536, 8192),
        ]

    def test_latest_tag_is_the_same_model(self, store: ResultStore, ledger: Ledger, db_path: Path) -> None:
        """llama3.1 and llama3.1:latest share one change history, as they share one Ollama model."""
        ledger.record(event(model="llama3.1"))
        ledger.record(event(model="llama3.1:latest"))
        ledger.record(event(model="hf.co/org/repo"))
        assert store.flush(timeout_s=10.0)
        assert len(store.recent_results(model="llama3.1", limit=10)) == 2
        store.close()
        assert rows(db_path, "SELECT model FROM changes ORDER BY id") == [
            ("llama3.1:latest",),
            ("hf.co/org/repo:latest",),
        ]

    def test_a_spilled_result_marks_its_change(
        self, store: ResultStore, ledger: Ledger, db_path: Path
    ) -> None:
        """changes.spilled is set when any result under the change spilled."""
        ledger.record(event(applied_num_ctx=8192, spilled=False))
        ledger.record(event(applied_num_ctx=65536, spilled=False))
        ledger.record(event(applied_num_ctx=65536, spilled=True))
        store.close()
        assert rows(db_path, "SELECT to_num_ctx, spilled FROM changes ORDER BY id") == [
            (8192, 0),
            (65536, 1),
        ]


class TestReads:
    def test_recent_changes_newest_first_with_counts(self, store: ResultStore, ledger: Ledger) -> None:
        """The live view sees changes newest first, each with its result count."""
        for num_ctx in (8192, 8192, 16384):
            ledger.record(event(applied_num_ctx=num_ctx))
        assert store.flush(timeout_s=10.0)
        changes = store.change_rows(limit=10)
        assert [(c["to_num_ctx"], c["after"]["requests"], c["spilled"]) for c in changes] == [
            (16384, 1, False),
            (8192, 2, False),
        ]
        assert len(store.change_rows(limit=1)) == 1

    def test_recent_results_filters(self, store: ResultStore) -> None:
        """model, since_ts and limit narrow the newest-first list."""
        now = time.time()
        store.add(event(model="a:1b", ts=now - 100, eval_tokens=1))
        store.add(event(model="b:2b", ts=now - 50, eval_tokens=2))
        store.add(event(model="a:1b", ts=now - 10, eval_tokens=3))
        assert store.flush(timeout_s=10.0)
        assert [r["eval_tokens"] for r in store.recent_results(limit=10)] == [3, 2, 1]
        assert [r["eval_tokens"] for r in store.recent_results(model="a:1b", limit=10)] == [3, 1]
        assert [r["eval_tokens"] for r in store.recent_results(since_ts=now - 60, limit=10)] == [
            3,
            2,
        ]
        assert [r["eval_tokens"] for r in store.recent_results(limit=1)] == [3]

    async def test_reads_from_a_worker_thread(self, store: ResultStore) -> None:
        """Reads open their own connection, so asyncio.to_thread can run them."""
        store.add(event())
        assert await asyncio.to_thread(store.flush, 10.0)
        assert len(await asyncio.to_thread(store.recent_results, None, None, 5)) == 1
        assert len(await store.changes()) == 1

    def test_nothing_to_read(self, tmp_path: Path) -> None:
        """Without a database the views are empty, not an error."""
        (tmp_path / "not-a-dir").write_text("")
        result_store = ResultStore(tmp_path / "not-a-dir" / DB_FILENAME)
        result_store.close()
        assert result_store.change_rows() == []
        assert result_store.recent_results(limit=5) == []
