"""Where a governor process spends its CPU: ``python -m bench.profile`` (needs py-spy).

Samples a real ``python -m proxy serve`` with py-spy while the load generator drives one kind of
request at a time, and prints the main thread's CPU per request by function (inclusive):

- ``show``: ``POST /api/show``, only relayed: what aiohttp costs to pass a small request through;
- ``chat``: ``POST /api/chat``, governed: the same plus parsing, facts, policies, rewriting and
  recording; the ``chat - show`` column is what governing costs, function by function;
- ``stream``: 256 streams paced at 80 lines/s, one line per write (per line, not per request).

py-spy attaches with ptrace: run as root, or with ``kernel.yama.ptrace_scope = 0``.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import targets
from bench.overhead import FULL, Bench, Target
from bench.stats import table

FRAME = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    """py-spy on PATH or next to this Python (a virtual environment's bin/)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


Samples = collections.Counter[str]


def sample(
    spy_binary: str, pid: int, rate: int, run: Callable[[], dict[str, Any]]
) -> tuple[Samples, Samples, dict[str, Any]]:
    """Main-thread samples per function, inclusive and self, while ``run`` drives load."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
        spy = subprocess.Popen(
            [
                spy_binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--threads",
                "--format",
                "raw",
                "-o",
                raw.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        result = run()
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        counts: Samples = collections.Counter()
        own: Samples = collections.Counter()
        for line in Path(raw.name).read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            if "MainThread" not in frames[0]:
                continue
            for name in {FRAME.sub(")", frame) for frame in frames[1:]}:
                counts[name] += int(n)
            own[FRAME.sub(")", frames[-1])] += int(n)
    return counts, own, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8000, help="requests per kind (default 8000)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--top", type=int, default=40, help="functions to show (default 40)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    spy_binary = py_spy()
    if spy_binary is None:
        print("bench.profile: py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    us_per_sample = 1e6 / args.rate
    workdir = Path(tempfile.mkdtemp(prefix="ollama-governor-profile-"))
    upstream = targets.start_upstream()
    loadgen = targets.LoadGen.start()
    governor = targets.start_governor("governor", upstream.port, workdir, loop=args.loop)
    try:
        target = Target("governor", governor.port, governor)
        bench = Bench(FULL, loadgen, upstream, [])
        per_request: dict[str, dict[str, float]] = {}
        for kind in ("show", "chat"):
            bench.job(target, "latency", kind=kind, clients=32, requests=1000, warmup=0)
            drive = partial(
                bench.job, target, "latency", kind=kind, clients=32, requests=args.requests, warmup=0
            )
            counts, _, result = sample(spy_binary, governor.pid, args.rate, drive)
            per_request[kind] = {name: n * us_per_sample / result["count"] for name, n in counts.items()}
        drive = partial(bench.job, target, "open_streams", streams=256, lines=400, interval_ms=12.5)
        counts, own, result = sample(spy_binary, governor.pid, args.rate, drive)
        per_request["stream"] = {name: n * us_per_sample / result["lines"] for name, n in counts.items()}
        per_request["stream self"] = {name: n * us_per_sample / result["lines"] for name, n in own.items()}
    finally:
        governor.stop()
        loadgen.stop()
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    show, chat, stream = per_request["show"], per_request["chat"], per_request["stream"]
    names = sorted(set(show) | set(chat), key=lambda n: chat.get(n, 0.0) - show.get(n, 0.0), reverse=True)
    rows = [
        [n, f"{chat.get(n, 0):.1f}", f"{show.get(n, 0):.1f}", f"{chat.get(n, 0) - show.get(n, 0):+.1f}"]
        for n in names[: args.top]
    ]
    print(table(["main thread, µs per request (inclusive)", "chat", "show", "chat - show"], rows))
    print()
    stream_self = per_request["stream self"]
    rows = [
        [n, f"{v:.2f}", f"{stream_self.get(n, 0.0):.2f}"]
        for n, v in sorted(stream.items(), key=lambda kv: kv[1], reverse=True)[: args.top]
    ]
    print(table(["main thread, µs per streamed line", "inclusive", "self"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
