"""Reading the recorded Ollama 0.33.0-rc2 exchanges in tests/data/ollama-0.33/ as plain data.

Why: the fake is checked against what a real Ollama answered, not against our reading of its
source. Each file holds one or more exchanges: the request, then the status line, headers and
body, or for a stream every line with its arrival time (see the files' first lines).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "ollama-0.33"
_REQUEST = re.compile(r"^### (GET|POST|HEAD|DELETE) (\S+)\s+\((\S+)\)$")
_STREAM_LINE = re.compile(r"^\+\s+[\d.]+ms  (.*)$")


@dataclass(frozen=True)
class Exchange:
    """One recorded request and Ollama's answer; ``lines`` holds a stream's lines, in order."""

    method: str
    path: str
    at: str
    request_body: str | None
    request_headers: dict[str, str]
    status: int
    headers: dict[str, str]
    body: str
    lines: tuple[str, ...]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def request_json(self) -> Any:
        return json.loads(self.request_body or "null")


def exchanges(name: str) -> list[Exchange]:
    """Every exchange in tests/data/ollama-0.33/``name``."""
    text = (DATA / name).read_text(encoding="utf-8")
    blocks = re.split(r"(?m)^(?=### (?:GET|POST|HEAD|DELETE) )", text)
    return [_exchange(b) for b in blocks if _REQUEST.match(b.splitlines()[0])]


def exchange(name: str) -> Exchange:
    """The one exchange in a file that holds exactly one."""
    (only,) = exchanges(name)
    return only


def _exchange(block: str) -> Exchange:
    rows = block.splitlines()
    m = _REQUEST.match(rows[0])
    assert m is not None
    body: str | None = None
    req_headers: dict[str, str] = {}
    status, headers, lines, content = 0, {}, [], ""
    i = 1
    while i < len(rows):
        row = rows[i]
        if row.startswith("### request body: "):
            body = row[len("### request body: ") :]
        elif row.startswith("### request headers: "):
            req_headers = json.loads(row[len("### request headers: ") :])
        elif row.startswith("### status "):
            status = int(row.split()[2])
        elif row.startswith("### header "):
            key, _, value = row[len("### header ") :].partition(": ")
            headers[key] = value
        elif (sm := _STREAM_LINE.match(row)) is not None:
            lines.append(ast.literal_eval(sm.group(1)))
        elif row.startswith("HTTP/1.1 "):
            status = int(row.split()[1])
            i += 1
            while rows[i]:
                key, _, value = rows[i].partition(": ")
                headers[key] = value
                i += 1
            end = next(j for j in range(i + 1, len(rows)) if rows[j].startswith("### http_code="))
            content = "\n".join(rows[i + 1 : end])
            if content.endswith("\n") or (end - i - 1 > 1 and rows[end - 1] == ""):
                content = content.rstrip("\n") + "\n"
            i = end
        i += 1
    return Exchange(
        m.group(1), m.group(2), m.group(3), body, req_headers, status, headers, content, tuple(lines)
    )


def shape(obj: Any) -> Any:
    """The keys (in order) and JSON types of a value, recursively; lists by their first item."""
    if isinstance(obj, dict):
        return [(k, shape(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return ["list", shape(obj[0])] if obj else ["list"]
    if isinstance(obj, bool):
        return "bool"
    if isinstance(obj, int | float):
        return "number"
    return type(obj).__name__


@dataclass(frozen=True)
class ReloadStep:
    """One row of a reload_*.txt summary: what was sent, whether a runner started, /api/ps after."""

    step: str
    route: str
    sent: dict[str, Any]
    status: int
    runner_started: bool
    started_ctx: int | None
    loaded: tuple[tuple[str, int, int, str], ...]
    """(name, context_length, size, expires_at) per /api/ps entry, in /api/ps order."""
    at: str


def reload_steps(name: str) -> list[ReloadStep]:
    """The summary table of a reload experiment, with each step's request time from its detail."""
    text = (DATA / name).read_text(encoding="utf-8")
    times = dict(re.findall(r"(?m)^### step (.+?): (?:GET|POST) \S+\s+\((\S+)\)$", text))
    steps = []
    for row in re.findall(r"(?m)^\| (?!step |---)(.+) \|$", text):
        cells = [c.strip() for c in row.split(" | ")]
        step, route, sent, status, _load, started, ps = cells
        started_ctx = re.search(r"-c (\d+)", started)
        loaded = tuple(
            (e[0], int(e[1]), int(e[2]), e[3])
            for e in re.findall(r"(\S+) ctx=(\d+) size=(\d+) exp=(\S+?)(?:;|$)", ps)
        )
        steps.append(
            ReloadStep(
                step,
                route.split()[1],
                json.loads(sent.strip("`")),
                int(status),
                started.startswith("yes"),
                int(started_ctx.group(1)) if started_ctx else None,
                loaded,
                times.get(step, ""),
            )
        )
    return steps


def matrix_rows(section: str) -> list[dict[str, str]]:
    """The rows of memory-matrix.txt table ``section`` ("A" or "B") as column -> cell."""
    text = (DATA / "memory-matrix.txt").read_text(encoding="utf-8")
    part = re.split(r"\n## (?=[A-Z])", text.split(f"## {section}.", 1)[1], maxsplit=1)[0]
    rows = [r for r in part.splitlines() if r.startswith("| ")]  # the header, then the data rows
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in r.strip("|").split("|")), strict=True)) for r in rows[1:]]
