"""What the governor costs: every figure measured directly and through each proxy, same run.

The fake upstream is measured alone first (the "direct" column is its capacity together with the
load generator). Then each point of the plan is run against every target in turn (direct,
governor on uvloop, governor on asyncio, nginx), so drift over the run affects all alike and
every proxy figure is reported next to the direct one it is compared with. Latency is reported
as time added over direct, throughput as a fraction of direct.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench import chain_cost, targets
from bench.stats import fmt, markdown_table, table
from bench.targets import HOST, LoadGen, Process

DIRECT = "direct"
MiB = 1 << 20
GiB = 1 << 30

TARGETS_MET = {
    "p50_added_us_32": 500.0,
    "p99_added_us_32": 2000.0,
    "lines_per_s": 20_000.0,
    "open_streams_rss_mb": 100.0,
    "chain_us": 50.0,
}
"""The goals from the issue: added latency at 32 clients, streamed lines/s per process, peak RSS
with 1000 open streams, and the policy chain's own time."""


@dataclass(frozen=True)
class Plan:
    """How much load each point gets: the full run, or a smoke run that only checks it works."""

    closed_1_requests: int = 5000
    closed_32_requests: int = 10000
    paced_clients: int = 32
    paced_rate_per_s: float = 320.0
    paced_duration_s: float = 8.0
    ttfb_requests: int = 2000
    streams: tuple[tuple[int, int, int, float], ...] = (
        (1, 20, 1000, 0.0),
        (32, 5, 200, 0.0),
        (256, 1, 200, 0.0),
        (256, 1, 200, 12.5),
    )
    """(concurrent streams, streams each, lines per stream, ms between lines): flat out (the
    fake writes a line per loop turn, so a busy proxy reads several per chunk), then paced at
    80 lines/s per stream, 20,480 lines/s in all, one line per write as Ollama sends tokens."""
    open_streams: int = 1000
    open_stream_lines: int = 100
    open_stream_interval_ms: float = 10.0
    blob_bytes: int = GiB
    chain_iterations: int = 20000
    ablation_requests: int = 12000
    ablation_rounds: int = 3

    @property
    def warmup(self) -> int:
        return max(20, self.closed_1_requests // 20)


FULL = Plan()
SMOKE = Plan(
    closed_1_requests=40,
    closed_32_requests=200,
    paced_rate_per_s=320.0,
    paced_duration_s=0.1,
    ttfb_requests=20,
    streams=((1, 2, 20, 0.0), (2, 2, 20, 0.0), (2, 1, 10, 1.0)),
    open_streams=2,
    open_stream_lines=5,
    open_stream_interval_ms=1.0,
    blob_bytes=8 * MiB,
    chain_iterations=200,
    ablation_requests=90,
)


@dataclass
class Target:
    """Somewhere the load generator can send load: the upstream itself or a proxy in front."""

    name: str
    port: int
    process: Process | None = None
    """The proxy's process (None for direct), whose CPU and memory are reported."""


class Bench:
    """Runs the plan against every target and keeps the results."""

    def __init__(self, plan: Plan, loadgen: LoadGen, upstream: Process, target_list: list[Target]) -> None:
        self.plan = plan
        self.loadgen = loadgen
        self.upstream = upstream
        self.targets = target_list

    def job(self, target: Target, job: str, **params: Any) -> dict[str, Any]:
        """One load-generator job, with the CPU each process spent on it."""
        watched = [self.upstream, self.loadgen] + ([target.process] if target.process else [])
        before = {p.name: p.cpu_s() for p in watched}
        result = self.loadgen.run(job, host=HOST, port=target.port, **params)
        if "error" in result:
            raise RuntimeError(f"{job} against {target.name} failed: {result['error']}")
        wall_s = result.get("elapsed_s") or 0.0
        for p in watched:
            role = "proxy" if p is target.process else p.name
            spent = p.cpu_s() - before[p.name]
            result[f"{role}_cpu_s"] = spent
            if wall_s:
                result[f"{role}_cpu_pct"] = 100 * spent / wall_s
        requests = result.get("requests_total")  # warm-up included: its CPU is in the figure too
        if target.process is not None and requests:
            result["proxy_cpu_us_per_request"] = 1e6 * result["proxy_cpu_s"] / requests
        return result

    def each(self, job: str, **params: Any) -> dict[str, dict[str, Any]]:
        return {target.name: self.job(target, job, **params) for target in self.targets}

    def latency(self) -> dict[str, Any]:
        """Small requests: one client back to back, 32 clients at a fixed rate, 32 flat out."""
        plan, out = self.plan, {}
        for kind in ("chat", "tags"):
            closed_1 = self.each(
                "latency", kind=kind, clients=1, requests=plan.closed_1_requests, warmup=plan.warmup
            )
            paced = self.each(
                "paced",
                kind=kind,
                clients=plan.paced_clients,
                rate_per_s=plan.paced_rate_per_s,
                duration_s=plan.paced_duration_s,
            )
            closed_32 = self.each(
                "latency", kind=kind, clients=32, requests=plan.closed_32_requests, warmup=plan.warmup
            )
            out[kind] = {
                "1": _added(closed_1),
                "32_paced": _added(paced),
                "32_saturated": _throughput(_added(closed_32), "rps"),
            }
        return out

    def ttfb(self) -> dict[str, Any]:
        """Time to the first streamed line, one client, short streams one after another."""
        return _added(self.each("ttfb", requests=self.plan.ttfb_requests, warmup=self.plan.warmup, lines=4))

    def streams(self) -> dict[str, Any]:
        """NDJSON lines per second through one process, as a fraction of direct."""
        out = {}
        for streams, rounds, lines, interval_ms in self.plan.streams:
            key = f"{streams}" if not interval_ms else f"{streams} paced {1000 / interval_ms:g}/s"
            results = self.each(
                "stream", streams=streams, rounds=rounds, lines=lines, interval_ms=interval_ms
            )
            out[key] = _throughput(results, "lines_per_s")
        return out

    def with_peak_rss(self, job: str, **params: Any) -> dict[str, dict[str, Any]]:
        """Run ``job`` against each target with the proxy's memory high-water mark reset first."""
        results = {}
        for target in self.targets:
            process = target.process
            exact = process.reset_peak() if process else False
            rss_before = process.rss_bytes() if process else 0
            result = self.job(target, job, **params)
            if process is not None:
                result["rss_before_mb"] = rss_before / MiB
                result["peak_rss_mb"] = process.peak_rss_bytes() / MiB
                result["peak_rss_exact"] = exact  # False: the peak since start, an upper bound
            results[target.name] = result
        return results

    def open_streams(self) -> dict[str, Any]:
        """1000 streams open at once: all must complete, every line intact; peak RSS."""
        plan = self.plan
        return self.with_peak_rss(
            "open_streams",
            streams=plan.open_streams,
            lines=plan.open_stream_lines,
            interval_ms=plan.open_stream_interval_ms,
        )

    def blob(self) -> dict[str, Any]:
        """A large upload generated on the fly: throughput and the proxy's peak RSS."""
        results = self.with_peak_rss("blob", size=self.plan.blob_bytes, piece=MiB)
        return _throughput(results, "mib_per_s")


def _added(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target's latency minus direct's, at p50 and p99."""
    direct = results[DIRECT]
    for name, point in results.items():
        if name != DIRECT:
            point["added_p50_us"] = point["p50_us"] - direct["p50_us"]
            point["added_p99_us"] = point["p99_us"] - direct["p99_us"]
    return results


def _throughput(results: dict[str, dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Each target's ``key`` as a fraction of direct's."""
    direct = results[DIRECT][key]
    for point in results.values():
        point["fraction_of_direct"] = point[key] / direct if direct else None
    return results


def _ablation(
    plan: Plan, loadgen: LoadGen, upstream: Process, workdir: Path, default: Target, loop: str
) -> dict[str, Any]:
    """CPU per governed request with one part of the governor turned off at a time.

    The variants run in turns, several rounds, and each keeps its median: one process at a
    time on two cores is noisy, and the differences sought are tens of µs.
    """
    variants: dict[str, dict[str, Any]] = {
        "no results store": {"store": False},
        "no result log line": {"log_level": "warning"},
        "no policies": {"policies": False},
        "none of the three": {"store": False, "log_level": "warning", "policies": False},
    }
    measured: list[tuple[str, Target, str]] = [("as configured", default, "chat")]
    started: list[Process] = []
    try:
        for name, switches in variants.items():
            slug = name.replace(" ", "-")
            process = targets.launch_governor(slug, upstream.port, workdir / slug, loop=loop, **switches)
            started.append(process)
            measured.append((name, Target(name, process.port, process), "chat"))
        for process in started:
            targets.ready(process)
        measured.append(("GET /api/tags (relay only)", default, "tags"))
        bench = Bench(plan, loadgen, upstream, [])
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in measured}
        for _, target, kind in measured:
            bench.job(target, "latency", kind=kind, clients=32, requests=plan.warmup, warmup=0)
        for _ in range(plan.ablation_rounds):
            for name, target, kind in measured:
                requests = plan.ablation_requests // plan.ablation_rounds
                samples[name].append(
                    bench.job(target, "latency", kind=kind, clients=32, requests=requests, warmup=0)
                )
    finally:
        for process in started:
            process.stop()
    out: dict[str, Any] = {}
    for name, results in samples.items():
        out[name] = {
            "cpu_us_per_request": statistics.median(r["proxy_cpu_us_per_request"] for r in results),
            "rps": statistics.median(r["rps"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "rounds_cpu_us_per_request": [r["proxy_cpu_us_per_request"] for r in results],
        }
    return out


def _chain(
    config: Path, upstream_url: str, iterations: int, loops: list[str], rounds: int = 3
) -> dict[str, Any]:
    """The decision cost in-process, on each event loop asked for.

    Each loop gets ``rounds`` rounds, interleaved with the other loop's, and keeps its quietest
    (lowest chain p50), as ``timeit`` keeps its best: a µs-scale figure on a shared 2-core
    machine is easily doubled by a neighbour, and that says nothing about the chain.
    """
    best: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for loop in loops:
            coro = chain_cost.measure(config, upstream_url, iterations)
            if loop == "uvloop":
                import uvloop

                result = uvloop.run(coro)
            else:
                result = asyncio.run(coro)
            if loop not in best or result["chain"]["p50_us"] < best[loop]["chain"]["p50_us"]:
                best[loop] = result
    for result in best.values():
        result["rounds"] = rounds
    return best


def _log_problems(log: Path) -> dict[str, Any]:
    """Warnings and errors the governor logged during the run (there should be none), with the
    events they were, so a run that logged some says which."""
    counts: dict[str, Any] = {"warning": 0, "error": 0, "events": {}}
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            level = entry.get("level") if isinstance(entry, dict) else None
            if level in ("warning", "error"):
                counts[level] += 1
                event = str(entry.get("event"))
                counts["events"][event] = counts["events"].get(event, 0) + 1
    return counts


def available_loops(requested: str) -> list[str]:
    """The governor loops to measure; uvloop only when installed."""
    loops = ["uvloop", "asyncio"] if requested == "both" else [requested]
    if "uvloop" in loops and importlib.util.find_spec("uvloop") is None:
        loops.remove("uvloop")
    return loops


def run(smoke: bool = False, loop: str = "both", progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole overhead benchmark and return its results (see ``render``)."""
    plan = SMOKE if smoke else FULL
    loops = available_loops(loop)
    workdir = Path(tempfile.mkdtemp(prefix="ollama-governor-bench-"))
    processes: list[Process] = []
    try:
        upstream = targets.start_upstream()
        processes.append(upstream)
        loadgen = LoadGen.start()
        processes.append(loadgen)
        target_list = [Target(DIRECT, upstream.port)]
        governors: dict[str, Process] = {}
        for name in loops:  # launched together, then waited for: start-up dominates a smoke run
            process = targets.launch_governor(
                f"governor-{name}", upstream.port, workdir / f"governor-{name}", loop=name
            )
            processes.append(process)
            governors[name] = process
        for name, process in governors.items():
            targets.ready(process)
            target_list.append(Target(f"governor ({name})", process.port, process))
        if targets.nginx_binary() is not None:
            nginx = targets.start_nginx(upstream.port, workdir / "nginx")
            processes.append(nginx)
            target_list.append(Target("nginx", nginx.port, nginx))
        bench = Bench(plan, loadgen, upstream, target_list)
        direct = target_list[0]
        result: dict[str, Any] = {
            "plan": dataclasses.asdict(plan),
            "targets": [t.name for t in target_list],
            "governor_loops": {
                name: ("uvloop" if p.uses_uvloop() else "asyncio") for name, p in governors.items()
            },
        }
        progress("overhead: the fake upstream alone")
        result["upstream_alone"] = {
            "chat_32": bench.job(
                direct,
                "latency",
                kind="chat",
                clients=32,
                requests=plan.closed_32_requests,
                warmup=plan.warmup,
            ),
            "tags_32": bench.job(
                direct,
                "latency",
                kind="tags",
                clients=32,
                requests=plan.closed_32_requests,
                warmup=plan.warmup,
            ),
            "stream_32": bench.job(
                direct, "stream", streams=32, rounds=plan.streams[1][1], lines=plan.streams[1][2]
            ),
        }
        progress("overhead: small-request latency")
        result["latency"] = bench.latency()
        progress("overhead: time to first streamed line")
        result["ttfb"] = bench.ttfb()
        progress("overhead: streamed throughput")
        result["streams"] = bench.streams()
        progress(f"overhead: {plan.open_streams} open streams")
        result["open_streams"] = bench.open_streams()
        progress(f"overhead: {plan.blob_bytes // MiB} MiB blob upload")
        result["blob"] = bench.blob()
        default = next(
            t for t in target_list if t.process is not None and t.process.name.startswith("governor")
        )
        progress("overhead: policy chain, in-process")
        config = workdir / f"governor-{loops[0]}" / "config.toml"
        result["chain"] = _chain(config, f"http://{HOST}:{upstream.port}", plan.chain_iterations, loops)
        progress("overhead: where a governed request's CPU goes")
        result["ablation"] = _ablation(plan, loadgen, upstream, workdir, default, loops[0])
        result["governor_log"] = {
            name: _log_problems(workdir / f"governor-{name}" / "governor.log") for name in governors
        }
        result["verdict"] = verdict(result)
        return result
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _default_governor(result: dict[str, Any]) -> str:
    names: list[str] = [t for t in result["targets"] if t.startswith("governor")]
    return names[0]


def verdict(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of the issue, met or missed, for the governor as it runs by default."""
    gov = _default_governor(result)
    loop = gov.removeprefix("governor (").rstrip(")")
    lat = result["latency"]
    chain = result["chain"][loop]["chain"]
    flat_out = {k: v for k, v in result["streams"].items() if "paced" not in k}
    paced = [v for k, v in result["streams"].items() if "paced" in k]
    lines = min(point[gov]["lines_per_s"] for point in flat_out.values())
    open_streams = result["open_streams"][gov]
    checks = {
        "chat p50 added @32 clients (µs)": (
            lat["chat"]["32_paced"][gov]["added_p50_us"],
            TARGETS_MET["p50_added_us_32"],
        ),
        "tags p50 added @32 clients (µs)": (
            lat["tags"]["32_paced"][gov]["added_p50_us"],
            TARGETS_MET["p50_added_us_32"],
        ),
        "chat p99 added @32 clients (µs)": (
            lat["chat"]["32_paced"][gov]["added_p99_us"],
            TARGETS_MET["p99_added_us_32"],
        ),
        "tags p99 added @32 clients (µs)": (
            lat["tags"]["32_paced"][gov]["added_p99_us"],
            TARGETS_MET["p99_added_us_32"],
        ),
        "streamed lines/s flat out, worst of 1/32/256 streams": (lines, TARGETS_MET["lines_per_s"]),
        "peak RSS with all streams open (MB)": (
            open_streams["peak_rss_mb"],
            TARGETS_MET["open_streams_rss_mb"],
        ),
        "policy chain p50 (µs)": (chain["p50_us"], TARGETS_MET["chain_us"]),
    }
    out = {}
    for name, (value, goal) in checks.items():
        higher_is_better = "lines/s" in name
        met = value >= goal if higher_is_better else value <= goal
        out[name] = {"value": value, "target": goal, "met": met}
    for point in paced:
        offered = point[DIRECT]["lines_per_s"]
        out[f"keeps up with {fmt(offered)} lines/s, one line per write (x direct)"] = {
            "value": point[gov]["fraction_of_direct"],
            "target": 0.95,
            "met": point[gov]["fraction_of_direct"] >= 0.95,
        }
    out["all streams complete and intact"] = {
        "value": f"{open_streams['completed']}/{open_streams['streams']}, {open_streams['corrupted']} corrupted",
        "target": "all, 0 corrupted",
        "met": open_streams["completed"] == open_streams["streams"] and open_streams["corrupted"] == 0,
    }
    return out


# -- rendering -------------------------------------------------------------------------------


def _lat(point: dict[str, Any] | None, key: str) -> str:
    if point is None:
        return "-"
    added = point.get(f"added_{key}")
    base = fmt(point[key])
    return base if added is None else f"{base} ({added:+,.0f})"


def rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The summary table: one row per figure, one column per target."""
    names = result["targets"]
    header = ["figure", *names]
    out: list[list[str]] = []

    def row(label: str, points: dict[str, Any], cell: Callable[[dict[str, Any] | None], str]) -> None:
        out.append([label, *(cell(points.get(name)) for name in names)])

    up = result["upstream_alone"]
    out.append(
        [
            "fake upstream alone: chat / tags req/s, lines/s @32",
            f"{fmt(up['chat_32']['rps'])} / {fmt(up['tags_32']['rps'])} / {fmt(up['stream_32']['lines_per_s'])}",
            *[""] * (len(names) - 1),
        ]
    )
    for kind, label in (("chat", "POST /api/chat"), ("tags", "GET /api/tags")):
        lat = result["latency"][kind]
        for key in ("p50_us", "p99_us"):
            row(f"{label} {key[:3]} µs, 1 client", lat["1"], partial(_lat, key=key))
        for key in ("p50_us", "p99_us"):
            row(
                f"{label} {key[:3]} µs, 32 clients @{fmt(result['plan']['paced_rate_per_s'])}/s",
                lat["32_paced"],
                partial(_lat, key=key),
            )
        row(f"{label} req/s, 32 clients flat out", lat["32_saturated"], lambda p: fmt(p and p["rps"]))
        row(
            f"{label} proxy CPU µs/request",
            lat["32_saturated"],
            lambda p: fmt(p and p.get("proxy_cpu_us_per_request")),
        )
        row(
            "  CPU % proxy / fake upstream, flat out",
            lat["32_saturated"],
            lambda p: "-" if p is None else f"{fmt(p.get('proxy_cpu_pct'))} / {fmt(p['upstream_cpu_pct'])}",
        )
    for key in ("p50_us", "p99_us"):
        row(f"first streamed line {key[:3]} µs", result["ttfb"], partial(_lat, key=key))
    for streams, points in result["streams"].items():
        row(
            f"lines/s, {streams} stream(s) (x direct)",
            points,
            lambda p: "-" if p is None else f"{fmt(p['lines_per_s'])} ({p['fraction_of_direct']:.2f})",
        )
        row(
            f"  lines per chunk received / proxy CPU %, {streams}",
            points,
            lambda p: "-" if p is None else f"{p['lines_per_piece']:.1f} / {fmt(p.get('proxy_cpu_pct'))}",
        )
    opened = result["open_streams"]
    count = next(iter(opened.values()))["streams"]
    row(
        f"{count} open streams: complete / corrupted",
        opened,
        lambda p: "-" if p is None else f"{p['completed']} / {p['corrupted']}",
    )
    row(f"{count} open streams: proxy peak RSS MB", opened, lambda p: fmt(p and p.get("peak_rss_mb")))
    blob = result["blob"]
    size = fmt(result["plan"]["blob_bytes"] / MiB)
    row(
        f"{size} MiB upload MiB/s (x direct)",
        blob,
        lambda p: (
            "-"
            if p is None
            else f"{fmt(p['mib_per_s'])} ({p['fraction_of_direct']:.2f})"
            + ("" if p["intact"] else " CORRUPT")
        ),
    )
    row(f"{size} MiB upload: proxy peak RSS MB", blob, lambda p: fmt(p and p.get("peak_rss_mb")))
    return header, out


def chain_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The in-process decision cost, per loop."""
    rounds = next(iter(result["chain"].values())).get("rounds", 1)
    header = [f"in-process, µs per request (quietest of {rounds} rounds)", "p50", "p99", "mean"]
    out = []
    for loop, figures in result["chain"].items():
        for part, label in (
            ("chain", "policy chain (headroom + keep_alive)"),
            ("decision", "parse + context + chain + rewrite"),
            ("record", "result: metrics + log line + sinks"),
        ):
            f = figures[part]
            out.append([f"{label} [{loop}]", fmt(f["p50_us"], 1), fmt(f["p99_us"], 1), fmt(f["mean_us"], 1)])
    return header, out


def ablation_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [f"{_default_governor(result)}, 32 clients flat out", "CPU µs/request", "req/s"]
    return header, [
        [name, fmt(v["cpu_us_per_request"]), fmt(v["rps"])] for name, v in result["ablation"].items()
    ]


def _digits(value: float) -> int:
    return 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0


def verdict_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["target", "measured", "goal", "met"]
    out = []
    for name, v in result["verdict"].items():
        value = v["value"] if isinstance(v["value"], str) else fmt(v["value"], _digits(v["value"]))
        goal = v["target"] if isinstance(v["target"], str) else fmt(v["target"], _digits(v["target"]))
        out.append([name, value, goal, "yes" if v["met"] else "NO"])
    return header, out


def render(result: dict[str, Any], markdown: bool = False) -> str:
    """Every table of the overhead benchmark, as text (or Markdown for the README)."""
    draw = markdown_table if markdown else table
    parts = [
        draw(*rows(result)),
        draw(*chain_rows(result)),
        draw(*ablation_rows(result)),
        draw(*verdict_rows(result)),
    ]
    logged = ", ".join(
        f"{loop}: {counts['warning']} warnings, {counts['error']} errors"
        + (
            f" ({', '.join(f'{event} {n}' for event, n in counts['events'].items())})"
            if counts["events"]
            else ""
        )
        for loop, counts in result["governor_log"].items()
    )
    return "\n\n".join([*parts, f"governor log during the run: {logged}"])
