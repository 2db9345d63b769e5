"""Exact percentiles from every sample, and the small helpers the reports share."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted samples (no interpolation, no sketch)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def summarize_ns(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max and mean of latencies given in ns, reported in µs."""
    ordered = sorted(samples_ns)
    count = len(ordered)
    return {
        "count": count,
        "p50_us": percentile(ordered, 0.50) / 1000,
        "p90_us": percentile(ordered, 0.90) / 1000,
        "p99_us": percentile(ordered, 0.99) / 1000,
        "p999_us": percentile(ordered, 0.999) / 1000,
        "max_us": (ordered[-1] / 1000) if ordered else math.nan,
        "mean_us": (sum(ordered) / count / 1000) if ordered else math.nan,
    }


def fmt(value: object, digits: int = 0) -> str:
    """A number for a table cell: thousands separated, ``-`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, first column left-aligned and the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table in Markdown, for the README."""
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
