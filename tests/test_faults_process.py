"""The fault suite, part two: faults that need a real ``ollama-governor serve`` process.

SIGTERM with long streams in flight (the drain), and malformed requests full of secrets with
everything the process writes captured (no byte of a body, header value or query string in it).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.ledger.store import DB_FILENAME
from proxy.upstream.inflight import SHUTTING_DOWN
from tests.conftest import StartFake, start_app
from tests.fake_ollama import FakeOllama
from tests.faultkit import address, exchange, limits, read_head, served_governor

DRAIN_S = 4.0
STATIC_4096 = '[[rules]]\nmodels = ["*"]\npolicies = [{ use = "static", num_ctx = 4096 }]\n'
"""The fake's own default context on a CPU-only host: passthrough streams share the runner."""
MODEL = "gemma3-270m"


@pytest.fixture
async def held(start_fake: StartFake) -> FakeOllama:
    """A fake whose streams send their first line, then wait until ``hold`` is set."""
    fake = await start_fake(version="0.33.0-rc2", num_parallel=16)
    fake.hold = asyncio.Event()
    return fake


def fake_url(fake: FakeOllama) -> str:
    return str(fake.url)  # type: ignore[attr-defined]


def stored_results(state_dir: Path) -> list[tuple[int, int, str]]:
    with sqlite3.connect(state_dir / DB_FILENAME) as conn:
        rows = conn.execute("SELECT status, completed, error FROM results ORDER BY id").fetchall()
    return [(int(s), int(c), str(e)) for s, c, e in rows]


STREAMS = [
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "again"}]}),
    ("/api/generate", {"model": MODEL, "prompt": "hi"}),
    (
        "/v1/chat/completions",
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ),
    (
        "/v1/messages",
        {"model": MODEL, "stream": True, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
    ),
]
GOVERNED = len(STREAMS)
"""Every one is governed: the /v1 routes are translated to native calls and decided too."""


async def open_streams(http: aiohttp.ClientSession, url: str) -> list[aiohttp.ClientResponse]:
    """Start every stream in ``STREAMS`` and wait until each has sent its first bytes."""
    responses = [await http.post(url + path, json=body) for path, body in STREAMS]
    for response in responses:
        assert response.status == 200
        await asyncio.wait_for(response.content.readline(), 10)
    return responses


class TestDrain:
    """SIGTERM: finish within drain_timeout, end cut streams with their error, record every result."""

    async def test_streams_still_running_are_cut_and_recorded(self, held: FakeOllama, tmp_path: Path) -> None:
        """Streams that do not finish get their route's error at the deadline, the governor exits
        within drain_timeout, and each governed stream is a 503 result in the store."""
        config = limits(drain_timeout=f"{DRAIN_S}s") + STATIC_4096
        async with (
            served_governor(config, fake_url(held), tmp_path) as governor,
            aiohttp.ClientSession() as http,
        ):
            streams = await open_streams(http, governor.url)
            sent = time.monotonic()
            governor.process.send_signal(signal.SIGTERM)
            tails = [await asyncio.wait_for(response.read(), 15) for response in streams]
            assert await governor.finished() == 0
            took_s = time.monotonic() - sent
        assert took_s < DRAIN_S
        chat, again, generate, openai, anthropic = tails
        for ndjson in (chat, again, generate):
            assert json.loads(ndjson.splitlines()[-1]) == {"error": SHUTTING_DOWN}
        assert json.loads(openai.rstrip().rsplit(b"data: ", 1)[1])["error"]["message"] == SHUTTING_DOWN
        assert anthropic.rstrip().splitlines()[-2] == b"event: error"
        assert [(e["status"], e["completed"]) for e in governor.events("result")] == [(503, False)] * GOVERNED
        assert stored_results(tmp_path / "state") == [(503, 0, SHUTTING_DOWN)] * GOVERNED
        assert governor.events("drained")[0]["cut"] == len(STREAMS)

    async def test_streams_that_finish_in_time_are_not_cut(self, held: FakeOllama, tmp_path: Path) -> None:
        """Streams that end during the drain end normally; new connections are refused and a
        reload is ignored meanwhile."""
        config = limits(drain_timeout=f"{DRAIN_S}s") + STATIC_4096
        async with (
            served_governor(config, fake_url(held), tmp_path) as governor,
            aiohttp.ClientSession() as http,
        ):
            streams = await open_streams(http, governor.url)
            governor.process.send_signal(signal.SIGTERM)
            await governor.wait_for("draining")
            with pytest.raises(OSError):
                await asyncio.open_connection(*address(governor.url))
            governor.process.send_signal(signal.SIGHUP)  # a reload during the stop is ignored
            await governor.wait_for("reload_ignored")
            held.hold.set()  # type: ignore[union-attr]
            tails = [await asyncio.wait_for(response.read(), 15) for response in streams]
            assert await governor.finished() == 0
        assert all(b"error" not in tail for tail in tails)
        assert [(e["status"], e["completed"]) for e in governor.events("result")] == [(200, True)] * GOVERNED
        assert governor.events("drained")[0]["cut"] == 0

    async def test_a_policy_that_never_stops_cannot_hold_the_exit(
        self, held: FakeOllama, tmp_path: Path
    ) -> None:
        """A policy task that swallows every cancellation is left behind: the exit stays in bound."""
        config = (
            'policy_timeout = "100ms"\n'
            + limits(drain_timeout=f"{DRAIN_S}s")
            + '[[rules]]\nmodels = ["*"]\npolicies = [{ use = "tests.fault_policies:never_stops" }]\n'
        )
        held.hold.set()  # type: ignore[union-attr]
        async with served_governor(config, fake_url(held), tmp_path) as governor:
            async with aiohttp.ClientSession() as http:
                body = {"model": MODEL, "prompt": "hi", "stream": False}
                async with http.post(governor.url + "/api/generate", json=body) as response:
                    assert response.status == 200
            sent = time.monotonic()
            governor.process.send_signal(signal.SIGTERM)
            assert await governor.finished() == 0
            took_s = time.monotonic() - sent
        assert took_s < DRAIN_S
        [left] = governor.events("exit_without_stragglers")
        assert left["tasks"] == ["policy tests.fault_policies:never_stops"]


SECRET_PROMPT = "PROMPT-7d1f"
SECRET_TOKEN = "TOKEN-93ab"
SECRET_QUERY = "QUERY-c4e2"
SECRETS = (SECRET_PROMPT, SECRET_TOKEN, SECRET_QUERY)


def malformed_requests() -> dict[str, bytes]:
    """Requests whose framing aiohttp refuses, each carrying the secrets where they would be."""
    body = json.dumps({"model": MODEL, "prompt": SECRET_PROMPT}).encode()
    auth = b"Authorization: Bearer " + SECRET_TOKEN.encode() + b"\r\n"
    query = b"?key=" + SECRET_QUERY.encode()
    chunked = b"Transfer-Encoding: chunked\r\n\r\n"
    return {
        "bad chunk size": b"POST /api/generate"
        + query
        + b" HTTP/1.1\r\nHost: x\r\n"
        + auth
        + chunked
        + b"Z"
        + SECRET_PROMPT.encode()
        + b"\r\n"
        + body
        + b"\r\n0\r\n\r\n",
        "control byte in a header": b"POST /api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET_TOKEN.encode()
        + b"\x01\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        "DEL in the URL": b"GET /api/tags" + query + b"\x7f HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        "bad method": b"G\x01T /api/tags" + query + b" HTTP/1.1\r\n" + auth + b"\r\n",
        "TE and CL": b"POST /api/generate"
        + query
        + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        + chunked
        + b"0\r\n\r\n",
        "bad Content-Length": b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + SECRET_TOKEN.encode()
        + b"\r\n\r\n",
        "header too long": b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-A: "
        + SECRET_TOKEN.encode() * 8000
        + b"\r\n\r\n",
        "bad version": b"GET /api/tags" + query + b" HTTP/9." + SECRET_TOKEN.encode() + b"\r\n\r\n",
        "non-UTF-8 admin token": b"GET /governor/status"
        + query
        + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET_TOKEN.encode()
        + b"\xff\xfe\r\nConnection: close\r\n\r\n",
    }


class TestNoSecretInTheLog:
    """Whatever a client sends, the governor writes none of its bytes to stdout or stderr."""

    async def test_malformed_and_failing_requests_leave_no_secret(self, tmp_path: Path) -> None:
        """Every malformed framing, a stalled body, an oversized body, governed and relayed
        requests and an unreachable Ollama, all carrying secrets: none appears in the output."""
        fake = FakeOllama(version="0.33.0-rc2")
        ollama = await start_app(fake.app)
        config = (
            'admin_token = "admin"\n'
            + limits(body_timeout="500ms", max_governed_body="64KiB")
            + '[[rules]]\nmodels = ["*"]\npolicies = [{ use = "static", num_ctx = 2048 }]\n'
        )
        auth = {"Authorization": f"Bearer {SECRET_TOKEN}", "X-Api-Key": SECRET_TOKEN}
        query = f"?key={SECRET_QUERY}"
        async with served_governor(config, ollama.url, tmp_path) as governor:
            for name, raw in malformed_requests().items():
                response = await exchange(governor.url, raw)
                assert response.startswith(b"HTTP/1.") and b" 500 " not in response[:15], name
            head, _, rest = malformed_requests()["bad chunk size"].partition(b"\r\n\r\n")
            reader, writer = await asyncio.open_connection(*address(governor.url))
            writer.write(head + b"\r\nExpect: 100-continue\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # 100 Continue: the body is awaited
            writer.write(rest)  # the broken chunk after the head: aiohttp drops the body
            final, _ = await asyncio.wait_for(read_head(reader), 10)
            assert final.startswith(b"HTTP/1.1 408")
            writer.close()
            async with aiohttp.ClientSession() as http:
                chat = {"model": MODEL, "prompt": SECRET_PROMPT, "stream": False}
                for path, body in (
                    ("/api/generate", chat),
                    ("/api/show", {"model": MODEL, "x": SECRET_PROMPT}),
                ):
                    async with http.post(governor.url + path + query, json=body, headers=auth) as response:
                        assert response.status == 200
                big = {"model": MODEL, "prompt": SECRET_PROMPT * 10_000, "stream": False}
                async with http.post(
                    governor.url + "/api/generate" + query, json=big, headers=auth
                ) as response:
                    assert response.status == 200
                await ollama.runner.cleanup()  # Ollama goes away
                for path in ("/api/generate", "/api/tags"):
                    async with http.post(governor.url + path + query, json=chat, headers=auth) as response:
                        assert response.status == 502
            governor.process.send_signal(signal.SIGTERM)
            assert await governor.finished() == 0
        output = bytes(governor.output)
        assert governor.events("bad_request") and governor.events("upstream_unavailable")
        assert governor.events("not_governed") and governor.events("result")
        for secret in SECRETS:
            assert secret.encode() not in output, f"{secret} in the governor's output"
