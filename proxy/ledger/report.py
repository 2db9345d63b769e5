"""What each num_ctx / keep_alive change did, read straight from the results database.

Works with no server running (``ollama-governor report``). The statistics are those of
``proxy.ledger.figures``; in addition:

* ``spill_fraction`` is spilled requests over all requests of the group.
* Dry-run rows are left out of every figure (their applied values were never sent to Ollama, so
  their timings belong to the client's settings) and only counted, in ``dry_run_requests``.
* ``since`` filters the per-model table by result time and lists only changes made inside the
  window; a listed change's before/after figures use every stored result of the two changes, so a
  change made just inside the window still has its "before".
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import json
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.ledger.figures import (
    ChangeReport,
    PhaseStats,
    PredictionStats,
    Samples,
    change_json,
    compare,
    median,
    percentile_nearest_rank,
    predictions,
    predictions_json,
)
from proxy.ledger.store import connect_readonly

__all__ = [
    "ChangeReport",
    "GroupStats",
    "PhaseStats",
    "Report",
    "build_report",
    "median",
    "parse_since",
    "percentile_nearest_rank",
    "render_text",
    "report_to_json",
]

REPORT_JSON_VERSION = 1

_SINCE_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_SINCE_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", re.IGNORECASE)


def parse_since(text: str) -> float:
    """Seconds in a ``--since`` value such as ``7d``, ``12h``, ``30m`` or ``90s``."""
    match = _SINCE_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid --since {text!r}: use a number and a unit s, m, h or d, e.g. 7d, 12h, 30m or 90s"
        )
    seconds = float(match.group(1)) * _SINCE_UNITS_S[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"invalid --since {text!r}: the window must be longer than zero")
    return seconds


@dataclass(frozen=True)
class GroupStats:
    """Results of one model at one applied num_ctx (None: Ollama's default was left alone)."""

    model: str
    applied_num_ctx: int | None
    requests: int
    loads: int
    load_ms_median: float | None
    load_ms_p95: float | None
    prompt_tokens_per_s_median: float | None
    eval_tokens_per_s_median: float | None
    spills: int
    spill_fraction: float
    truncation_suspects: int


@dataclass(frozen=True)
class Report:
    """Everything ``render_text`` and ``report_to_json`` show."""

    db_path: Path
    generated_ts: float
    since_ts: float | None
    model_glob: str | None
    requests: int
    dry_run_requests: int = 0
    groups: tuple[GroupStats, ...] = field(default_factory=tuple)
    changes: tuple[ChangeReport, ...] = field(default_factory=tuple)
    predictions: PredictionStats = field(default_factory=lambda: PredictionStats(0, 0, ()))


_VALUE_COLUMNS = (
    "reloaded",
    "load_ms",
    "prompt_tokens_per_s",
    "eval_tokens_per_s",
    "spilled",
    "truncation_suspect",
)


def _result_columns(conn: sqlite3.Connection) -> set[str]:
    return {str(row[1]) for row in conn.execute("PRAGMA table_info(results)")}


def _column_or_null(columns: set[str], name: str) -> str:
    """Select a column that an older, not yet migrated schema may lack, as NULL there."""
    return name if name in columns else f"NULL AS {name}"


def build_report(
    db_path: Path,
    *,
    model_glob: str | None = None,
    since_s: float | None = None,
    now: float | None = None,
) -> Report:
    """Read the database at ``db_path`` (read-only) and summarise it.

    ``model_glob`` is a shell-style pattern matched case-sensitively against the model name
    (``gemma3:*``). ``since_s`` limits the report to the last that many seconds before ``now``.
    """
    now_ts = time.time() if now is None else now
    since_ts = None if since_s is None else now_ts - since_s
    with contextlib.closing(connect_readonly(db_path)) as conn:
        return _build(conn, db_path, model_glob, since_ts, now_ts)


def _build(
    conn: sqlite3.Connection,
    db_path: Path,
    model_glob: str | None,
    since_ts: float | None,
    now_ts: float,
) -> Report:
    tables = {str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master")}
    if not {"results", "changes"} <= tables:
        return Report(db_path, now_ts, since_ts, model_glob, 0)
    models = sorted(str(row[0]) for row in conn.execute("SELECT DISTINCT model FROM changes"))
    if model_glob is not None:
        models = [m for m in models if fnmatch.fnmatchcase(m, model_glob)]
    if not models:
        return Report(db_path, now_ts, since_ts, model_glob, 0)

    result_columns = _result_columns(conn)
    placeholders = ", ".join("?" for _ in models)
    rows = conn.execute(
        "SELECT change_id, ts, model, applied_num_ctx, dry_run, reloaded, load_ms, "
        "prompt_tokens_per_s, eval_tokens_per_s, "
        f"{_column_or_null(result_columns, 'spilled')}, "
        f"{_column_or_null(result_columns, 'truncation_suspect')} "
        f"FROM results WHERE model IN ({placeholders}) ORDER BY id",
        models,
    )
    by_group: dict[tuple[str, int | None], Samples] = defaultdict(Samples)
    by_change: dict[int, Samples] = defaultdict(Samples)
    requests = 0
    dry_run_requests = 0
    for change_id, ts, model, num_ctx, dry_run, *values in rows:
        in_window = since_ts is None or ts >= since_ts
        if dry_run:
            if in_window:
                dry_run_requests += 1
            continue
        row = dict(zip(_VALUE_COLUMNS, values, strict=True))
        by_change[change_id].add(row)
        if in_window:
            by_group[(model, num_ctx)].add(row)
            requests += 1

    groups = tuple(
        GroupStats(
            model=model,
            applied_num_ctx=num_ctx,
            requests=samples.requests,
            loads=samples.loads,
            load_ms_median=median(samples.load_ms),
            load_ms_p95=percentile_nearest_rank(samples.load_ms, 95),
            prompt_tokens_per_s_median=median(samples.prompt_tokens_per_s),
            eval_tokens_per_s_median=median(samples.eval_tokens_per_s),
            spills=samples.spills,
            spill_fraction=samples.spills / samples.requests,
            truncation_suspects=samples.truncation_suspects,
        )
        for (model, num_ctx), samples in sorted(
            by_group.items(),
            key=lambda item: (item[0][0], -1 if item[0][1] is None else item[0][1]),
        )
    )
    changes = tuple(_changes(conn, models, since_ts, by_change))
    return Report(
        db_path,
        now_ts,
        since_ts,
        model_glob,
        requests,
        dry_run_requests,
        groups,
        changes,
        _predictions(conn, models, since_ts, result_columns),
    )


def _predictions(
    conn: sqlite3.Connection, models: Sequence[str], since_ts: float | None, columns: set[str]
) -> PredictionStats:
    """How often Ollama's scheduler did what was predicted (stores from before schema 4: none)."""
    if "predicted_action" not in columns:
        return PredictionStats(0, 0, ())
    placeholders = ", ".join("?" for _ in models)
    cursor = conn.execute(
        "SELECT ts, model, predicted_action, predicted_evictions, observed_action, observed_evictions "
        f"FROM results WHERE model IN ({placeholders}) AND (? IS NULL OR ts >= ?) AND dry_run = 0 "
        "ORDER BY id",
        [*models, since_ts, since_ts],
    )
    names = [column[0] for column in cursor.description]
    rows = []
    for values in cursor:
        row = dict(zip(names, values, strict=True))
        for key in ("predicted_evictions", "observed_evictions"):
            row[key] = json.loads(row[key]) if row[key] else []
        rows.append(row)
    return predictions(rows)


def _changes(
    conn: sqlite3.Connection,
    models: Sequence[str],
    since_ts: float | None,
    by_change: dict[int, Samples],
) -> Iterable[ChangeReport]:
    """Each change in time order, compared with the model's change just before it."""
    change_columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(changes)")}
    placeholders = ", ".join("?" for _ in models)
    rows = conn.execute(
        "SELECT id, model, ts, from_num_ctx, to_num_ctx, from_keep_alive, to_keep_alive, "
        f"{_column_or_null(change_columns, 'spilled')} "
        f"FROM changes WHERE model IN ({placeholders}) ORDER BY id",
        list(models),
    ).fetchall()
    previous_by_model: dict[str, int] = {}
    listed: list[ChangeReport] = []
    for change_id, model, ts, from_ctx, to_ctx, from_ka, to_ka, spilled in rows:
        previous_id = previous_by_model.get(model)
        previous_by_model[model] = change_id
        if since_ts is not None and ts < since_ts:
            continue
        after = by_change.get(change_id, Samples()).phase(change_id)
        before = None if previous_id is None else by_change.get(previous_id, Samples()).phase(previous_id)
        change = {
            "change_id": change_id,
            "model": model,
            "ts": ts,
            "from_num_ctx": from_ctx,
            "to_num_ctx": to_ctx,
            "from_keep_alive": from_ka,
            "to_keep_alive": to_ka,
            "spilled": spilled,
        }
        listed.append(compare(change, after, before))
    listed.sort(key=lambda change: (change.ts, change.change_id))
    return listed


# --- output -------------------------------------------------------------------------------------


def report_to_json(report: Report) -> dict[str, Any]:
    """The report as plain JSON types; ``report_version`` changes when a field changes meaning."""
    return {
        "report_version": REPORT_JSON_VERSION,
        "db_path": str(report.db_path),
        "generated_ts": report.generated_ts,
        "since_ts": report.since_ts,
        "model_glob": report.model_glob,
        "requests": report.requests,
        "dry_run_requests": report.dry_run_requests,
        "groups": [
            {
                "model": g.model,
                "applied_num_ctx": g.applied_num_ctx,
                "requests": g.requests,
                "loads": g.loads,
                "load_ms_median": g.load_ms_median,
                "load_ms_p95": g.load_ms_p95,
                "prompt_tokens_per_s_median": g.prompt_tokens_per_s_median,
                "eval_tokens_per_s_median": g.eval_tokens_per_s_median,
                "spills": g.spills,
                "spill_fraction": g.spill_fraction,
                "truncation_suspects": g.truncation_suspects,
            }
            for g in report.groups
        ],
        "changes": [change_json(c) for c in report.changes],
        "predictions": predictions_json(report.predictions),
    }


def _fmt_number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_seconds_from_ms(value_ms: float | None) -> str:
    return "-" if value_ms is None else f"{value_ms / 1000.0:.1f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f" ({value:.2f}x)" if value < 10 else f" ({value:.0f}x)"


def _fmt_opt(value: object) -> str:
    return "default" if value is None else str(value)


def _fmt_ts(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> list[str]:
    """Columns padded to their widest cell; numeric columns right-aligned."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if index in numeric else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _change_cells(change: ChangeReport) -> list[str]:
    before = change.before
    if change.first_seen:
        setting = f"num_ctx {_fmt_opt(change.to_num_ctx)}  keep_alive {_fmt_opt(change.to_keep_alive)}"
        eval_cell = f"{_fmt_number(change.after.eval_tokens_per_s_median)} tok/s"
        load_cell = f"{_fmt_seconds_from_ms(change.after.load_ms_median)} s"
        return [_fmt_ts(change.ts), change.model, f"first seen: {setting}", eval_cell, load_cell]
    parts = []
    if change.from_num_ctx != change.to_num_ctx:
        parts.append(f"num_ctx {_fmt_opt(change.from_num_ctx)} -> {_fmt_opt(change.to_num_ctx)}")
    if change.from_keep_alive != change.to_keep_alive:
        parts.append(f"keep_alive {_fmt_opt(change.from_keep_alive)} -> {_fmt_opt(change.to_keep_alive)}")
    before_eval = None if before is None else before.eval_tokens_per_s_median
    before_load = None if before is None else before.load_ms_median
    eval_cell = (
        f"{_fmt_number(before_eval)} -> {_fmt_number(change.after.eval_tokens_per_s_median)} tok/s"
        f"{_fmt_ratio(change.eval_tokens_per_s_ratio)}"
    )
    load_cell = (
        f"{_fmt_seconds_from_ms(before_load)} -> "
        f"{_fmt_seconds_from_ms(change.after.load_ms_median)} s{_fmt_ratio(change.load_ms_ratio)}"
    )
    return [_fmt_ts(change.ts), change.model, "  ".join(parts), eval_cell, load_cell]


def render_text(report: Report) -> str:
    """The report as aligned plain-text tables, for a terminal or a bug report."""
    window = "all stored results" if report.since_ts is None else f"since {_fmt_ts(report.since_ts)}"
    scope = "" if report.model_glob is None else f", models matching {report.model_glob!r}"
    dry_run = (
        f" (and {report.dry_run_requests} dry-run requests, not counted)" if report.dry_run_requests else ""
    )
    lines = [f"ollama-governor results: {report.requests} requests{dry_run}, {window}{scope}"]
    lines.append(f"database: {report.db_path}")
    lines.append("")
    if not report.groups:
        lines.append("No results.")
    else:
        header = [
            "MODEL",
            "NUM_CTX",
            "REQUESTS",
            "LOADS",
            "LOAD_MED_S",
            "LOAD_P95_S",
            "PROMPT_TOK/S",
            "EVAL_TOK/S",
            "SPILLED",
            "TRUNC?",
        ]
        rows = [
            [
                g.model,
                _fmt_opt(g.applied_num_ctx),
                str(g.requests),
                str(g.loads),
                _fmt_seconds_from_ms(g.load_ms_median),
                _fmt_seconds_from_ms(g.load_ms_p95),
                _fmt_number(g.prompt_tokens_per_s_median),
                _fmt_number(g.eval_tokens_per_s_median),
                f"{g.spills} ({g.spill_fraction:.0%})",
                str(g.truncation_suspects),
            ]
            for g in report.groups
        ]
        lines.extend(_table(header, rows, numeric=set(range(1, len(header)))))
    lines.append("")
    lines.append("Changes (oldest first; load figures over requests that reloaded the model):")
    if not report.changes:
        lines.append("No changes.")
    else:
        header = ["WHEN (UTC)", "MODEL", "CHANGE", "EVAL", "LOAD"]
        rows = [_change_cells(change) for change in report.changes]
        for row, change in zip(rows, report.changes, strict=True):
            if change.spilled:
                row[2] += "  [spilled]"
        lines.extend(_table(header, rows, numeric=set()))
    lines.append("")
    stats = report.predictions
    if stats.checked:
        lines.append(
            f"Ollama's scheduler did what the governor predicted for {stats.held} of {stats.checked} "
            f"requests ({stats.accuracy:.0%}); surprises, newest first:"
        )
        lines.extend(f"  {_fmt_ts(s.ts)}  {s.model}: {s.describe()}" for s in stats.surprises[:20])
        if not stats.surprises:
            lines.append("  none")
    else:
        lines.append("No scheduler predictions checked yet.")
    return "\n".join(lines) + "\n"
