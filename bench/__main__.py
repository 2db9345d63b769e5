"""``python -m bench [overhead|scenarios|cluster|faults|all] [--smoke] [--json PATH] [--loop asyncio|uvloop|both]``

Prints the tables and writes every figure, with the machine they came from, as JSON
(``bench/results/latest.json`` unless ``--json`` says otherwise). ``--smoke`` runs every code
path with tiny counts in seconds; its figures mean nothing. ``faults`` (not part of ``all``)
throws hostile clients, upstreams and inputs at a served governor under load (docs/faults.md).
``cluster`` simulates N models over three nodes behind a balancer, three ways (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import overhead
from bench.targets import ROOT, nginx_version

DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        done = subprocess.run(["lscpu"], capture_output=True, text=True, check=True)
        for line in done.stdout.splitlines():
            if line.startswith("Model name:"):
                return line.partition(":")[2].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def _commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """Where the figures came from: they only compare with figures from the same machine."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": _version("aiohttp"),
        "uvloop": _version("uvloop"),
        "nginx": nginx_version(),
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def _scenarios(smoke: bool, markdown: bool) -> dict[str, Any]:
    try:
        from bench import scenarios
    except ModuleNotFoundError as exc:
        if exc.name != "bench.scenarios":
            raise
        message = "bench/scenarios.py is missing: the scenario benchmark is not part of this checkout"
        print(f"bench: error: {message}", file=sys.stderr)
        return {"error": message}
    _progress("scenarios")
    result: dict[str, Any] = scenarios.run(smoke)
    print(scenarios.render(result))
    return result


def _faults(smoke: bool, markdown: bool) -> dict[str, Any]:
    import tempfile

    from bench import faults

    _progress("faults")
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as workdir:
        result: dict[str, Any] = faults.run(smoke, Path(workdir))
    print(faults.render(result, markdown=markdown))
    return result


def _cluster(smoke: bool, markdown: bool) -> dict[str, Any]:
    from bench import cluster

    _progress("cluster (simulated)")
    result: dict[str, Any] = cluster.run(smoke)
    print(cluster.render(result, markdown=markdown))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "what", nargs="?", choices=("overhead", "scenarios", "cluster", "faults", "all"), default="all"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts: check that it works, in seconds")
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"where to write the results ({DEFAULT_JSON.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop", "both"), default="both", help="the governor's event loop(s)"
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables as Markdown (for the README)"
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "smoke": args.smoke, "what": args.what}
    failed = False
    if args.what in ("overhead", "all"):
        results["overhead"] = overhead.run(smoke=args.smoke, loop=args.loop, progress=_progress)
        print(overhead.render(results["overhead"], markdown=args.markdown))
        print()
    if args.what in ("scenarios", "all"):
        results["scenarios"] = _scenarios(args.smoke, args.markdown)
        failed = "error" in results["scenarios"]
    if args.what in ("cluster", "all"):
        results["cluster"] = _cluster(args.smoke, args.markdown)
        print()
    if args.what == "faults":
        results["faults"] = _faults(args.smoke, args.markdown)
        failed = not results["faults"]["summary"]["passed"]
    results["duration_s"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    machine_line = ", ".join(f"{k} {v}" for k, v in results["machine"].items() if v)
    print(f"{machine_line}\n{results['duration_s']} s; results in {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
