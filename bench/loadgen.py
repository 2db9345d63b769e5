"""The load generator: ``python -m bench.loadgen`` reads one job per stdin line, answers one
JSON line per job on stdout.

A separate, long-lived process so that its CPU is never the proxy's and its start-up is paid
once. The same code drives every target (direct, governor, nginx): only host and port change,
so the differences between targets are the proxies' own. Every answer is checked: small bodies
byte for byte, streamed lines one by one, blob uploads by size and CRC.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from bench import payloads
from bench.client import Collect, Connection, StreamCheck, post_json, request_head
from bench.stats import summarize_ns
from bench.upstream import raise_fd_limit

Job = dict[str, Any]


async def _open_all(host: str, port: int, count: int, parallel: int = 64) -> list[Connection]:
    """Open ``count`` connections, a few at a time so no accept queue overflows."""
    gate = asyncio.Semaphore(parallel)

    async def one() -> Connection:
        async with gate:
            return await Connection.open(host, port)

    return list(await asyncio.gather(*(one() for _ in range(count))))


def _close_all(conns: list[Connection]) -> None:
    for conn in conns:
        conn.close()


def _small_request(kind: str, authority: str) -> tuple[bytes, bytes]:
    """The request and the exact answer expected: a governed chat, a GET, or a POST that is
    only relayed (``show``, to tell the cost of governing from the cost of a request body)."""
    if kind == "chat":
        return post_json("/api/chat", authority, payloads.chat_request(stream=False)), payloads.CHAT_REPLY
    if kind == "show":
        return post_json("/api/show", authority, b'{"model":"bench"}'), payloads.SHOW
    return request_head("GET", "/api/tags", authority), payloads.TAGS


async def latency(host: str, port: int, kind: str, clients: int, requests: int, warmup: int) -> Job:
    """``clients`` closed-loop clients send small requests back to back; every latency kept."""
    raw, expected = _small_request(kind, f"{host}:{port}")
    conns = await _open_all(host, port, clients)
    samples: list[int] = []
    errors = 0

    async def run(total: int, keep: bool) -> None:
        left = total

        async def client(conn: Connection) -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                sink = Collect()
                started = time.perf_counter_ns()
                answer = await conn.request(raw, sink)
                if keep:
                    samples.append(answer.end_ns - started)
                if answer.status != 200 or sink.value() != expected:
                    errors += 1

        await asyncio.gather(*(client(conn) for conn in conns))

    await run(warmup, keep=False)
    started = time.perf_counter()
    await run(requests, keep=True)
    elapsed = time.perf_counter() - started
    _close_all(conns)
    return {
        **summarize_ns(samples),
        "errors": errors,
        "elapsed_s": elapsed,
        "rps": len(samples) / elapsed,
        "requests_total": warmup + requests,
    }


async def paced(
    host: str, port: int, kind: str, clients: int, rate_per_s: float, duration_s: float, seed: int = 1
) -> Job:
    """``clients`` clients sending at a fixed total rate (Poisson arrivals, the same schedule for
    every target): the latency a proxy adds when it is busy but not saturated."""
    raw, expected = _small_request(kind, f"{host}:{port}")
    conns = await _open_all(host, port, clients)
    for conn in conns:  # one warm request each: connections, caches, the governor's facts
        await conn.request(raw, Collect())
    samples: list[int] = []
    counts = {"errors": 0, "late": 0}
    per_client_rate = rate_per_s / clients
    loop = asyncio.get_running_loop()
    begin = loop.time()

    async def client(index: int, conn: Connection) -> None:
        arrivals = random.Random(seed * 1000 + index)
        due = begin + arrivals.expovariate(per_client_rate)
        while due < begin + duration_s:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.001:
                counts["late"] += 1  # the previous answer was still pending: the target is saturated
            sink = Collect()
            started = time.perf_counter_ns()
            answer = await conn.request(raw, sink)
            samples.append(answer.end_ns - started)
            if answer.status != 200 or sink.value() != expected:
                counts["errors"] += 1
            due += arrivals.expovariate(per_client_rate)

    await asyncio.gather(*(client(i, conn) for i, conn in enumerate(conns)))
    elapsed = loop.time() - begin
    _close_all(conns)
    return {
        **summarize_ns(samples),
        **counts,
        "elapsed_s": elapsed,
        "rps": len(samples) / elapsed,
        "requests_total": len(samples) + clients,
    }


async def ttfb(host: str, port: int, requests: int, warmup: int, lines: int) -> Job:
    """One client, streamed chats one after another: time from sending to the first line."""
    conn = await Connection.open(host, port)
    authority = f"{host}:{port}"
    samples: list[int] = []
    bad = 0
    for index in range(warmup + requests):
        check = StreamCheck(index, lines)
        raw = post_json(
            "/api/chat", authority, payloads.chat_request(stream=True, stream_id=index, lines=lines)
        )
        started = time.perf_counter_ns()
        answer = await conn.request(raw, check)
        if answer.status != 200 or check.corrupted or not check.complete:
            bad += 1
        if index >= warmup:
            samples.append(check.first_line_ns - started)
    conn.close()
    return {**summarize_ns(samples), "errors": bad}


async def _streams(
    host: str, port: int, streams: int, rounds: int, lines: int, interval_ms: float = 0.0
) -> tuple[Job, list[Connection]]:
    """``streams`` connections each run ``rounds`` streamed chats in turn, every line checked."""
    conns = await _open_all(host, port, streams)
    authority = f"{host}:{port}"
    counts = {"open": 0, "peak_open": 0, "completed": 0, "corrupted": 0, "failed": 0, "lines": 0, "pieces": 0}

    async def client(index: int, conn: Connection) -> None:
        for round_ in range(rounds):
            stream_id = index * rounds + round_
            raw = post_json(
                "/api/chat",
                authority,
                payloads.chat_request(stream=True, stream_id=stream_id, lines=lines, interval_ms=interval_ms),
            )
            check = StreamCheck(stream_id, lines)
            counts["open"] += 1
            counts["peak_open"] = max(counts["peak_open"], counts["open"])
            try:
                answer = await conn.request(raw, check)
            except ConnectionError:
                counts["failed"] += 1
                return
            finally:
                counts["open"] -= 1
            counts["lines"] += check.seq
            counts["pieces"] += check.pieces
            if answer.status == 200 and check.complete and not check.corrupted:
                counts["completed"] += 1
            elif check.corrupted:
                counts["corrupted"] += 1
            else:
                counts["failed"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i, conn) for i, conn in enumerate(conns)))
    elapsed = time.perf_counter() - started
    del counts["open"]
    result: Job = {
        **counts,
        "streams": streams * rounds,
        "elapsed_s": elapsed,
        "lines_per_s": counts["lines"] / elapsed,
        "lines_per_piece": counts["lines"] / max(1, counts["pieces"]),
    }
    return result, conns


async def stream(
    host: str,
    port: int,
    streams: int,
    rounds: int,
    lines: int,
    interval_ms: float = 0.0,
    warmup_rounds: int = 1,
) -> Job:
    """Streamed throughput: NDJSON lines per second delivered to ``streams`` concurrent clients,
    sent as fast as possible (``interval_ms`` 0) or paced like tokens."""
    if warmup_rounds:
        _, conns = await _streams(host, port, streams, warmup_rounds, min(lines, 50), interval_ms)
        _close_all(conns)
    result, conns = await _streams(host, port, streams, rounds, lines, interval_ms)
    _close_all(conns)
    return result


async def open_streams(host: str, port: int, streams: int, lines: int, interval_ms: float) -> Job:
    """Many streams open at once (paced by the fake so they overlap); all must complete intact."""
    result, conns = await _streams(host, port, streams, 1, lines, interval_ms)
    _close_all(conns)
    return result


async def blob(host: str, port: int, size: int, piece: int) -> Job:
    """Upload ``size`` bytes generated on the fly; the fake's answer proves every byte arrived."""
    block = os.urandom(piece)
    pieces = size // piece
    expected_crc = 0
    for _ in range(pieces):
        expected_crc = zlib.crc32(block, expected_crc)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(pieces):
            yield block

    conn = await Connection.open(host, port)
    head = request_head("POST", "/api/blobs/sha256:" + "0" * 64, f"{host}:{port}", chunked=True)
    sink = Collect()
    started = time.perf_counter()
    answer = await conn.request(head, sink, body())
    elapsed = time.perf_counter() - started
    conn.close()
    received = json.loads(sink.value()) if answer.status == 201 else {}
    intact = received.get("bytes") == pieces * piece and received.get("crc32") == expected_crc
    return {
        "bytes": pieces * piece,
        "status": answer.status,
        "intact": intact,
        "elapsed_s": elapsed,
        "mib_per_s": pieces * piece / elapsed / (1 << 20),
    }


JOBS: dict[str, Callable[..., Coroutine[Any, Any, Job]]] = {
    "latency": latency,
    "paced": paced,
    "ttfb": ttfb,
    "stream": stream,
    "open_streams": open_streams,
    "blob": blob,
}


def main() -> int:
    raise_fd_limit()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        for line in sys.stdin:
            job = json.loads(line)
            name = job.pop("job")
            result: Job
            try:
                result = runner.run(JOBS[name](**job))
            except Exception as exc:  # report, keep serving: one broken target must not end the run
                result = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
