"""The offline report: figures checked against medians and p95s computed by hand."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from proxy.govern.record import GovernedRequest
from proxy.ledger.ledger import Ledger
from proxy.ledger.report import (
    Report,
    build_report,
    median,
    parse_since,
    percentile_nearest_rank,
    render_text,
    report_to_json,
)
from proxy.ledger.store import DB_FILENAME, ResultStore

BASE_TS = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
NOW_TS = BASE_TS + 3600.0
DAY_S = 86_400.0


def event(
    *,
    ts: float,
    model: str = "gemma3:27b",
    applied_num_ctx: int | None = 8192,
    applied_keep_alive: str | None = "5m",
    reloaded: bool = False,
    load_ms: float | None = None,
    prompt_tokens_per_s: float | None = None,
    eval_tokens_per_s: float | None = None,
    **fields: Any,
) -> GovernedRequest:
    return GovernedRequest(
        ts=ts,
        model=model,
        endpoint="generate",
        applied_num_ctx=applied_num_ctx,
        applied_keep_alive=applied_keep_alive,
        reloaded=reloaded,
        load_ms=load_ms,
        prompt_tokens_per_s=prompt_tokens_per_s,
        eval_tokens_per_s=eval_tokens_per_s,
        status=200,
        **fields,
    )


# Change ids follow insertion order: llama = 1, then gemma G1 = 2, G2 = 3, G3 = 4.
KNOWN_EVENTS = [
    # llama3.1:8b, ten days ago, Ollama's default context: change 1 (first seen).
    event(
        ts=BASE_TS - 10 * DAY_S,
        model="llama3.1:8b",
        applied_num_ctx=None,
        applied_keep_alive=None,
        reloaded=True,
        load_ms=2000.0,
        prompt_tokens_per_s=500.0,
        eval_tokens_per_s=40.0,
    ),
    # A dry-run row: never counted in figures, never a change.
    event(
        ts=BASE_TS - 10 * DAY_S + 1,
        model="llama3.1:8b",
        applied_num_ctx=131072,
        applied_keep_alive=None,
        reloaded=True,
        load_ms=99_999.0,
        eval_tokens_per_s=0.1,
        dry_run=True,
    ),
    # G1: gemma3:27b at 8192 / 5m (change 2).
    event(ts=BASE_TS + 0, reloaded=True, load_ms=4000.0, prompt_tokens_per_s=900.0,
          eval_tokens_per_s=10.0),
    event(ts=BASE_TS + 1, load_ms=5.0, prompt_tokens_per_s=1000.0, eval_tokens_per_s=9.0),
    event(ts=BASE_TS + 2, reloaded=True, load_ms=4200.0, prompt_tokens_per_s=800.0,
          eval_tokens_per_s=11.0),
    event(ts=BASE_TS + 3, load_ms=4.0, prompt_tokens_per_s=950.0, eval_tokens_per_s=9.5),
    event(ts=BASE_TS + 4, reloaded=True, load_ms=3900.0, eval_tokens_per_s=10.5,
          truncation_suspect=True),
    # G2: 65536 / 5m (change 3), spills.
    event(ts=BASE_TS + 100, applied_num_ctx=65536, reloaded=True, load_ms=95_000.0,
          prompt_tokens_per_s=100.0, eval_tokens_per_s=1.2, spilled=True),
    event(ts=BASE_TS + 101, applied_num_ctx=65536, load_ms=10.0, prompt_tokens_per_s=120.0,
          eval_tokens_per_s=1.0, spilled=True),
    event(ts=BASE_TS + 102, applied_num_ctx=65536, reloaded=True, load_ms=90_000.0,
          prompt_tokens_per_s=80.0, eval_tokens_per_s=1.4, spilled=False),
    event(ts=BASE_TS + 103, applied_num_ctx=65536, load_ms=8.0, prompt_tokens_per_s=110.0,
          eval_tokens_per_s=1.2, spilled=True),
    # G3: back to 8192, keep_alive 30m (change 4).
    event(ts=BASE_TS + 200, applied_keep_alive="30m", reloaded=True, load_ms=4100.0,
          prompt_tokens_per_s=1000.0, eval_tokens_per_s=10.2),
    event(ts=BASE_TS + 201, applied_keep_alive="30m", load_ms=3.0, eval_tokens_per_s=9.8),
]  # fmt: skip


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / DB_FILENAME
    store = ResultStore(path, retention_days=1e6, flush_interval_s=3600.0, batch_size=100_000)
    ledger = Ledger(store)
    for known in KNOWN_EVENTS:
        ledger.record(known)
    store.close()
    assert not store.degraded
    return path


def group(report: Report, model: str, num_ctx: int | None) -> Any:
    [found] = [g for g in report.groups if (g.model, g.applied_num_ctx) == (model, num_ctx)]
    return found


class TestStatistics:
    def test_median_is_the_usual_median(self) -> None:
        """Odd counts take the middle value, even counts the mean of the two middle ones."""
        assert median([3.0, 1.0, 2.0]) == 2.0
        assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
        assert median([]) is None

    def test_p95_is_nearest_rank(self) -> None:
        """The ceil(0.95 n)-th smallest value: always an observed value."""
        assert percentile_nearest_rank([float(v) for v in range(1, 21)], 95) == 19.0  # rank 19
        assert percentile_nearest_rank([float(v) for v in range(1, 22)], 95) == 20.0  # rank 20
        assert percentile_nearest_rank([float(v) for v in range(100, 0, -1)], 95) == 95.0
        assert percentile_nearest_rank([7.0], 95) == 7.0
        assert percentile_nearest_rank([1.0, 2.0, 3.0, 4.0], 50) == 2.0  # rank 2, not 2.5
        assert percentile_nearest_rank([], 95) is None


class TestParseSince:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("7d", 604_800.0), ("12h", 43_200.0), ("30m", 1800.0), ("90s", 90.0), ("1.5h", 5400.0)],
    )
    def test_units(self, text: str, seconds: float) -> None:
        """d, h, m and s, fractions allowed."""
        assert parse_since(text) == seconds

    @pytest.mark.parametrize("text", ["", "7", "d", "7x", "7 days", "-1d", "1d2h"])
    def test_malformed_is_a_clear_error(self, text: str) -> None:
        """A bad value says what a good one looks like."""
        with pytest.raises(ValueError, match=r"e\.g\. 7d, 12h, 30m or 90s"):
            parse_since(text)

    def test_zero_is_rejected(self) -> None:
        """An empty window is a mistake, not an empty report."""
        with pytest.raises(ValueError, match="longer than zero"):
            parse_since("0d")


class TestGroups:
    def test_figures_per_model_and_num_ctx(self, db_path: Path) -> None:
        """Counts, medians and p95 per (model, applied num_ctx), checked by hand."""
        report = build_report(db_path, now=NOW_TS)
        assert [(g.model, g.applied_num_ctx) for g in report.groups] == [
            ("gemma3:27b", 8192),
            ("gemma3:27b", 65536),
            ("llama3.1:8b", None),
        ]
        assert report.requests == 12  # 13 rows minus the dry run
        assert report.dry_run_requests == 1

        at_8k = group(report, "gemma3:27b", 8192)  # G1 and G3 rows together
        assert at_8k.requests == 7
        assert at_8k.loads == 4
        # reloads: 4000, 4200, 3900, 4100 -> sorted 3900 4000 4100 4200 -> (4000 + 4100) / 2
        assert at_8k.load_ms_median == 4050.0
        # nearest rank ceil(0.95 * 4) = 4 -> 4200
        assert at_8k.load_ms_p95 == 4200.0
        # 900 1000 800 950 1000 -> sorted 800 900 950 1000 1000 -> 950
        assert at_8k.prompt_tokens_per_s_median == 950.0
        # 10 9 11 9.5 10.5 10.2 9.8 -> sorted 9 9.5 9.8 10 10.2 10.5 11 -> 10.0
        assert at_8k.eval_tokens_per_s_median == 10.0
        assert (at_8k.spills, at_8k.spill_fraction, at_8k.truncation_suspects) == (0, 0.0, 1)

        at_64k = group(report, "gemma3:27b", 65536)
        assert at_64k.requests == 4
        assert at_64k.loads == 2
        assert at_64k.load_ms_median == 92_500.0  # (90000 + 95000) / 2
        assert at_64k.load_ms_p95 == 95_000.0  # ceil(0.95 * 2) = 2 -> 95000
        assert at_64k.prompt_tokens_per_s_median == 105.0  # 80 100 110 120 -> (100 + 110) / 2
        assert at_64k.eval_tokens_per_s_median == 1.2  # 1.0 1.2 1.2 1.4 -> 1.2
        assert (at_64k.spills, at_64k.spill_fraction, at_64k.truncation_suspects) == (3, 0.75, 0)

        llama = group(report, "llama3.1:8b", None)  # the dry run's 99999 ms is not here
        assert (llama.requests, llama.loads, llama.load_ms_median, llama.load_ms_p95) == (
            1,
            1,
            2000.0,
            2000.0,
        )
        assert llama.eval_tokens_per_s_median == 40.0

    def test_an_empty_database(self, tmp_path: Path) -> None:
        """A database with no results yet gives an empty report, not an error."""
        path = tmp_path / DB_FILENAME
        ResultStore(path).close()
        report = build_report(path, now=NOW_TS)
        assert (report.requests, report.groups, report.changes) == (0, (), ())
        assert "No results." in render_text(report)

    def test_missing_database_says_where_it_looked(self, tmp_path: Path) -> None:
        """No database is an error naming the path, and nothing is created there."""
        missing = tmp_path / "nowhere" / DB_FILENAME
        with pytest.raises(FileNotFoundError, match="no results database at"):
            build_report(missing)
        assert not missing.parent.exists()


class TestChanges:
    def test_changes_with_before_and_after(self, db_path: Path) -> None:
        """Each change compares its own results with those of the model's previous change."""
        report = build_report(db_path, now=NOW_TS)
        assert [(c.change_id, c.model) for c in report.changes] == [
            (1, "llama3.1:8b"),
            (2, "gemma3:27b"),
            (3, "gemma3:27b"),
            (4, "gemma3:27b"),
        ]
        llama, first, to_64k, back_to_8k = report.changes
        assert llama.first_seen and llama.before is None
        assert first.first_seen and first.before is None
        assert first.after.requests == 5

        assert (to_64k.from_num_ctx, to_64k.to_num_ctx) == (8192, 65536)
        assert to_64k.spilled
        assert to_64k.before is not None
        # before = G1: reloads 3900 4000 4200 -> 4000; eval 9 9.5 10 10.5 11 -> 10.0
        assert (to_64k.before.load_ms_median, to_64k.before.eval_tokens_per_s_median) == (
            4000.0,
            10.0,
        )
        # after = G2: reloads 90000 95000 -> 92500; eval 1.0 1.2 1.2 1.4 -> 1.2
        assert (to_64k.after.load_ms_median, to_64k.after.eval_tokens_per_s_median) == (
            92_500.0,
            1.2,
        )
        assert to_64k.eval_tokens_per_s_ratio == pytest.approx(0.12)  # 1.2 / 10.0
        assert to_64k.load_ms_ratio == pytest.approx(23.125)  # 92500 / 4000

        assert (back_to_8k.from_keep_alive, back_to_8k.to_keep_alive) == ("5m", "30m")
        assert not back_to_8k.spilled
        # after = G3: reload 4100; eval 9.8 10.2 -> 10.0
        assert back_to_8k.after.load_ms_median == 4100.0
        assert back_to_8k.after.eval_tokens_per_s_median == pytest.approx(10.0)
        assert back_to_8k.eval_tokens_per_s_ratio == pytest.approx(10.0 / 1.2)
        assert back_to_8k.load_ms_ratio == pytest.approx(4100.0 / 92_500.0)


class TestFiltering:
    def test_since_drops_old_results_and_changes(self, db_path: Path) -> None:
        """--since 7d leaves out llama's results and change from ten days ago."""
        report = build_report(db_path, since_s=7 * DAY_S, now=NOW_TS)
        assert report.since_ts == NOW_TS - 7 * DAY_S
        assert {g.model for g in report.groups} == {"gemma3:27b"}
        assert report.requests == 11
        assert report.dry_run_requests == 0
        assert [c.change_id for c in report.changes] == [2, 3, 4]

    def test_a_change_inside_the_window_keeps_its_before(self, db_path: Path) -> None:
        """Cut between G1 and G2: G1's rows leave the table but still serve as G2's "before"."""
        report = build_report(db_path, since_s=NOW_TS - (BASE_TS + 50), now=NOW_TS)
        assert group(report, "gemma3:27b", 8192).requests == 2  # only G3's two rows
        assert [c.change_id for c in report.changes] == [3, 4]
        before = report.changes[0].before
        assert before is not None
        assert (before.requests, before.eval_tokens_per_s_median) == (5, 10.0)

    def test_model_glob(self, db_path: Path) -> None:
        """A shell pattern picks models; a pattern matching nothing gives an empty report."""
        llama_only = build_report(db_path, model_glob="llama*", now=NOW_TS)
        assert [g.model for g in llama_only.groups] == ["llama3.1:8b"]
        assert [c.change_id for c in llama_only.changes] == [1]
        gemma_only = build_report(db_path, model_glob="gemma3:*", now=NOW_TS)
        assert {g.model for g in gemma_only.groups} == {"gemma3:27b"}
        assert gemma_only.requests == 11
        nothing = build_report(db_path, model_glob="qwen*", now=NOW_TS)
        assert (nothing.requests, nothing.groups, nothing.changes) == (0, (), ())


class TestJson:
    def test_shape(self, db_path: Path) -> None:
        """Plain JSON types, a version, and every figure under a stable key."""
        document = report_to_json(build_report(db_path, since_s=30 * DAY_S, now=NOW_TS))
        assert json.loads(json.dumps(document)) == document
        assert set(document) == {
            "report_version",
            "db_path",
            "generated_ts",
            "since_ts",
            "model_glob",
            "requests",
            "dry_run_requests",
            "groups",
            "changes",
            "predictions",
        }
        assert document["report_version"] == 1
        assert document["generated_ts"] == NOW_TS
        assert document["groups"][1] == {
            "model": "gemma3:27b",
            "applied_num_ctx": 65536,
            "requests": 4,
            "loads": 2,
            "load_ms_median": 92_500.0,
            "load_ms_p95": 95_000.0,
            "prompt_tokens_per_s_median": 105.0,
            "eval_tokens_per_s_median": 1.2,
            "spills": 3,
            "spill_fraction": 0.75,
            "truncation_suspects": 0,
        }
        to_64k = document["changes"][2]
        assert set(to_64k) == {
            "change_id",
            "model",
            "ts",
            "from_num_ctx",
            "to_num_ctx",
            "from_keep_alive",
            "to_keep_alive",
            "spilled",
            "first_seen",
            "before",
            "after",
            "eval_tokens_per_s_ratio",
            "load_ms_ratio",
        }
        assert to_64k["before"] == {
            "change_id": 2,
            "requests": 5,
            "loads": 3,
            "load_ms_median": 4000.0,
            "eval_tokens_per_s_median": 10.0,
        }
        assert document["changes"][0]["before"] is None


class TestText:
    def test_group_table_is_aligned(self, db_path: Path) -> None:
        """One row per (model, num_ctx); numbers right-aligned under their headers."""
        lines = render_text(build_report(db_path, now=NOW_TS)).splitlines()
        header_index = next(i for i, line in enumerate(lines) if line.startswith("MODEL"))
        header = lines[header_index]
        row_64k = lines[header_index + 2]
        assert row_64k.split() == [
            "gemma3:27b",
            "65536",
            "4",
            "2",
            "92.5",
            "95.0",
            "105.0",
            "1.2",
            "3",
            "(75%)",
            "0",
        ]
        for title in ("NUM_CTX", "REQUESTS", "LOAD_P95_S", "EVAL_TOK/S"):
            end = header.index(title) + len(title)
            for row in lines[header_index + 1 : header_index + 4]:
                assert row[end - 1] != " ", (title, row)
                assert row[end : end + 2] == "  ", (title, row)
        assert lines[header_index + 3].split()[:2] == ["llama3.1:8b", "default"]

    def test_change_lines_read_at_a_glance(self, db_path: Path) -> None:
        """before -> after with the ratio, loads in seconds."""
        text = render_text(build_report(db_path, now=NOW_TS))
        [to_64k] = [line for line in text.splitlines() if "8192 -> 65536" in line]
        assert "gemma3:27b" in to_64k
        assert "2025-06-15 15:08:20Z" in to_64k  # BASE_TS + 100
        assert "10.0 -> 1.2 tok/s (0.12x)" in to_64k
        assert "4.0 -> 92.5 s (23x)" in to_64k
        assert "[spilled]" in to_64k
        [back] = [line for line in text.splitlines() if "65536 -> 8192" in line]
        assert "keep_alive 5m -> 30m" in back
        assert "1.2 -> 10.0 tok/s (8.33x)" in back
        assert "92.5 -> 4.1 s (0.04x)" in back
        assert "1 dry-run requests, not counted" in text


V1_DDL = [
    """CREATE TABLE changes (id INTEGER PRIMARY KEY, model TEXT NOT NULL, ts REAL NOT NULL,
        from_num_ctx INTEGER, to_num_ctx INTEGER, from_keep_alive TEXT, to_keep_alive TEXT)""",
    """CREATE TABLE results (id INTEGER PRIMARY KEY, change_id INTEGER NOT NULL,
        ts REAL NOT NULL, model TEXT NOT NULL, endpoint TEXT NOT NULL, client_num_ctx INTEGER,
        applied_num_ctx INTEGER, client_keep_alive TEXT, applied_keep_alive TEXT,
        changed_by TEXT, load_ms REAL, total_ms REAL, prompt_tokens_per_s REAL,
        eval_tokens_per_s REAL, prompt_tokens INTEGER, eval_tokens INTEGER, reloaded INTEGER,
        status INTEGER, done_reason TEXT, dry_run INTEGER NOT NULL DEFAULT 0)""",
    "PRAGMA user_version = 1",
]


class TestOlderSchema:
    def test_reads_a_version_1_database_without_migrating_it(self, tmp_path: Path) -> None:
        """The report is read-only, so columns an old schema lacks count as unknown."""
        path = tmp_path / DB_FILENAME
        conn = sqlite3.connect(path)
        for statement in V1_DDL:
            conn.execute(statement)
        conn.execute("INSERT INTO changes VALUES (1, 'm:1b', ?, NULL, 4096, NULL, '5m')", (BASE_TS,))
        conn.execute(
            "INSERT INTO results (change_id, ts, model, endpoint, applied_num_ctx, reloaded, "
            "load_ms, eval_tokens_per_s) VALUES (1, ?, 'm:1b', 'chat', 4096, 1, 1500.0, 50.0)",
            (BASE_TS,),
        )
        conn.commit()
        conn.close()
        report = build_report(path, now=NOW_TS)
        [only] = report.groups
        assert (only.requests, only.load_ms_median, only.spills, only.truncation_suspects) == (
            1,
            1500.0,
            0,
            0,
        )
        assert report.changes[0].spilled is False
        check = sqlite3.connect(path)
        assert check.execute("PRAGMA user_version").fetchone() == (1,)
        check.close()


class TestPredictions:
    def test_accuracy_and_surprises(self, tmp_path: Path) -> None:
        """How often Ollama's scheduler did what was predicted, and each time it did not, in words."""
        path = tmp_path / DB_FILENAME
        store = ResultStore(path, retention_days=1e6, flush_interval_s=3600.0, batch_size=100_000)
        ledger = Ledger(store)
        ledger.record(event(ts=BASE_TS, predicted_action="load", observed_action="load"))
        ledger.record(event(ts=BASE_TS + 1, predicted_action="reuse", observed_action="reuse"))
        ledger.record(
            event(
                ts=BASE_TS + 2,
                predicted_action="load",
                observed_action="evict",
                observed_evictions=("nomic-embed-text:latest",),
            )
        )
        ledger.record(event(ts=BASE_TS + 3))  # nothing predicted: not counted
        store.close()
        report = build_report(path, now=NOW_TS)
        assert (report.predictions.checked, report.predictions.held) == (3, 2)
        [surprise] = report.predictions.surprises
        assert (
            surprise.describe()
            == "predicted a load beside the others, Ollama evicted nomic-embed-text:latest"
        )
        text = render_text(report)
        assert "did what the governor predicted for 2 of 3 requests (67%)" in text
        assert report_to_json(report)["predictions"]["accuracy"] == pytest.approx(2 / 3)
