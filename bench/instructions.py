"""Machine instructions per request of a served governor: ``python -m bench.instructions [chat|tags|stream]``.

The one cost figure that does not move with the machine's load: valgrind (cachegrind) counts the
instructions the governor's process executes, every thread included (the results store's writer
too). The benchmark's governor is served twice under it, from the same start: once for a few
requests, once for more; the difference divided by the extra requests is what one request costs,
start-up excluded. Requests go one at a time, as one client sends them. ``stream`` is a governed
chat streamed in ``bench.calls.STREAM_LINES`` paced lines, each its own read (what relaying a
line costs, summed). Two checkouts compared this way (``--checkout DIR`` serves another one's
governor with this harness) differ by what their code does; runs of one commit agree to a
fraction of a percent. Needs ``valgrind`` on the PATH (``apt-get install valgrind``); about a
minute.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import targets
from bench.calls import drive

FEW, MORE = 200, 1200
"""Requests sent in the two runs (after the same warm-up); the figure is their difference."""
STREAMS_FEW, STREAMS_MORE = 5, 25
"""The same for ``stream`` (each takes a third of a second of pacing)."""
WARMUP = 50
STREAMS_WARMUP = 5
START_S = 300.0
"""How long a governor under valgrind may take to listen (it runs some 50 times slower)."""
SUMMARY = re.compile(rb"^summary: (\d+)$", re.MULTILINE)


def counted(cachegrind_out: Path) -> int:
    """The instructions a cachegrind output file counts in all (its ``summary:`` line)."""
    found = SUMMARY.search(cachegrind_out.read_bytes())
    if found is None:
        raise ValueError(f"{cachegrind_out} has no cachegrind summary line")
    return int(found.group(1))


def per_request(few: tuple[int, int], more: tuple[int, int]) -> float:
    """Instructions per request from two runs given as ``(requests, instructions)``."""
    (few_requests, few_counted), (more_requests, more_counted) = few, more
    if more_requests <= few_requests:
        raise ValueError("the second run must send more requests than the first")
    return (more_counted - few_counted) / (more_requests - few_requests)


def _run(kind: str, requests: int, upstream_port: int, workdir: Path, checkout: Path) -> int:
    """Serve under cachegrind, send ``WARMUP + requests``, stop it, return what it counted."""
    out = workdir / "cachegrind.out"
    valgrind = ("valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}")
    governor = targets.launch_governor(
        "governor", upstream_port, workdir, loop="uvloop", under=valgrind, checkout=checkout
    )
    try:
        targets.ready(governor, START_S)
        url = f"http://{targets.HOST}:{governor.port}"
        warmup = STREAMS_WARMUP if kind == "stream" else WARMUP
        asyncio.run(drive(url, kind, warmup + requests, concurrency=1))
    finally:
        governor.stop()  # SIGTERM: serve returns and valgrind writes its counts
    return counted(out)


def measure(
    kind: str, few: int | None = None, more: int | None = None, checkout: Path = targets.ROOT
) -> float:
    """Instructions per request of ``kind`` (chat: governed, tags: relayed, stream: a governed
    stream of ``STREAM_LINES`` lines) of the governor in ``checkout``."""
    if few is None or more is None:
        few, more = (STREAMS_FEW, STREAMS_MORE) if kind == "stream" else (FEW, MORE)
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="governor-instructions-"))
    upstream = targets.start_upstream()
    try:
        with ThreadPoolExecutor(2) as pool:  # the two runs at once: the counts do not depend on it
            runs = [
                pool.submit(_run, kind, requests, upstream.port, workdir / str(requests), checkout)
                for requests in (few, more)
            ]
            counts = [run.result() for run in runs]
    finally:
        upstream.stop()
    return per_request((few, counts[0]), (more, counts[1]))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("kind", nargs="?", choices=("chat", "tags", "stream"), default="chat")
    parser.add_argument("--checkout", type=Path, default=targets.ROOT, help="serve this checkout's governor")
    args = parser.parse_args()
    try:
        instructions = measure(args.kind, checkout=args.checkout.resolve())
    except RuntimeError as exc:
        sys.exit(f"bench.instructions: {exc}")
    print(f"{args.kind}: {instructions:,.0f} instructions per request (valgrind, start-up excluded)")
    if args.checkout.resolve() != targets.ROOT:
        print(f"  governor from {args.checkout}")


if __name__ == "__main__":
    main()
