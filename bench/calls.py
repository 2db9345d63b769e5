"""Python calls per request of a served governor: ``python -m bench.calls [chat|tags] [N]``.

Timings on a shared machine move by tens of percent between runs of one commit; the number of
Python function calls a request costs does not. This serves the benchmark's governor (its
config, the fake upstream) under cProfile, sends N requests of one kind after a warm-up, stops it
with SIGTERM and prints the calls and the profiled main-thread time per request (start-up is
included, spread over the requests). Run it in two checkouts to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import tempfile
from pathlib import Path

import aiohttp

from bench import payloads, targets

WARMUP = 200
CONCURRENCY = 4


STREAM_LINES = 100
STREAM_INTERVAL_MS = 3.0
"""A ``stream`` request: a governed chat of this many lines, paced so that each is its own read."""


async def drive(url: str, kind: str, count: int, concurrency: int = CONCURRENCY) -> None:
    """Send ``count`` requests of ``kind`` (chat: a governed /api/chat, tags: a relayed /api/tags,
    stream: a governed /api/chat streamed ``STREAM_LINES`` lines, one per read)."""
    if kind == "stream":
        body = payloads.chat_request(stream=True, lines=STREAM_LINES, interval_ms=STREAM_INTERVAL_MS)
    else:
        body = payloads.chat_request(stream=False)
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as http:

        async def one() -> None:
            async with limit:
                if kind in ("chat", "stream"):
                    answer = await http.post(url + "/api/chat", data=body)
                else:
                    answer = await http.get(url + "/api/tags")
                async with answer:
                    await answer.read()
                    answer.raise_for_status()

        await asyncio.gather(*(one() for _ in range(count)))


def measure(kind: str, count: int) -> tuple[float, float]:
    """Calls and profiled µs per request of ``kind`` (chat: governed, tags: relayed)."""
    workdir = Path(tempfile.mkdtemp(prefix="governor-calls-"))
    profile = workdir / "serve.pstats"
    upstream = targets.start_upstream()
    try:
        governor = targets.start_governor("governor", upstream.port, workdir, loop="uvloop", profile=profile)
        try:
            url = f"http://{targets.HOST}:{governor.port}"
            asyncio.run(drive(url, kind, WARMUP))
            asyncio.run(drive(url, kind, count))
        finally:
            governor.stop()  # SIGTERM: serve returns and cProfile writes the profile
    finally:
        upstream.stop()
    stats = pstats.Stats(str(profile))
    requests = WARMUP + count
    seconds = sum(entry[2] for entry in stats.stats.values())
    return stats.total_calls / requests, seconds / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.calls", description=__doc__)
    parser.add_argument("kind", nargs="?", choices=("chat", "tags"), default="chat")
    parser.add_argument("requests", nargs="?", type=int, default=3000)
    args = parser.parse_args()
    calls, micros = measure(args.kind, args.requests)
    print(f"{args.kind}: {calls:,.0f} Python calls and {micros:,.0f} µs (profiled) per request")


if __name__ == "__main__":
    main()
