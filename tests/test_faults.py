"""The fault suite: hostile clients, broken upstreams, misbehaving policies and failing disks.

Every case runs the real governor in front of the real aiohttp fake Ollama (0.33.0-rc2) or a
hostile upstream, with raw sockets where the framing is the fault. Each must end in an answer in
Ollama's shape (never a 500 of the governor's own), a bounded wait, and one recorded result per
governed request. The subprocess faults (SIGTERM drain, secrets in the log) are in
``test_faults_process.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from proxy.app import reload
from proxy.govern.record import GovernedRequest
from proxy.keys import PIPELINE, UPSTREAM
from proxy.ledger.store import DB_FILENAME, ResultStore
from proxy.upstream.client import Upstream, UpstreamUnavailable
from tests.conftest import StartFake, StartProxy, client_requests, eventually, free_port, settled
from tests.fake_ollama import FakeOllama
from tests.faultkit import (
    NDJSON_HEAD,
    STATIC_2048,
    address,
    body_of,
    chunk,
    closed_within,
    done_line,
    exchange,
    first_response,
    governed,
    hostile_upstream,
    limits,
    read_head,
    status_of,
)

MODEL = "gemma3-270m"
GENERATE = {"model": MODEL, "prompt": "hi", "stream": False}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def fake(start_fake: StartFake) -> FakeOllama:
    """The fake following Ollama 0.33.0-rc2, serving gemma3-270m."""
    return await start_fake(version="0.33.0-rc2", num_parallel=4)


def fake_url(fake: FakeOllama) -> str:
    return str(fake.url)  # type: ignore[attr-defined]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def post_raw(http: aiohttp.ClientSession, url: str, raw: bytes) -> tuple[int, object]:
    """The status and the error Ollama gave (None for an answer): what a client acts on."""
    async with http.post(url, data=raw, headers={"Content-Type": "application/json"}) as response:
        body = await response.read()
    try:
        decoded = json.loads(body)
    except ValueError:
        return response.status, body
    return response.status, decoded.get("error") if isinstance(decoded, dict) else decoded


class TestBadInput:
    """Bodies Ollama itself refuses reach it untouched, and the client gets Ollama's answer."""

    @pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
    async def test_non_finite_numbers_are_ollamas_to_answer(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession, number: str
    ) -> None:
        """NaN, Infinity and 1e400 in options are not governed: the bytes go to Ollama as they
        are and its own answer comes back."""
        proxy = await start_proxy(fake_url(fake), STATIC_2048)
        raw = (
            b'{"model":"gemma3-270m","prompt":"hi","stream":false,"options":{"num_ctx":%s}}' % number.encode()
        )
        direct = await post_raw(http, fake_url(fake) + "/api/generate", raw)
        proxied = await post_raw(http, proxy.url + "/api/generate", raw)
        assert proxied == direct
        assert client_requests(fake)[-1].body == raw

    async def test_deep_nesting_is_relayed_untouched(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A body nested 100 000 levels deep does not crash the parser: it goes to Ollama as it is."""
        proxy = await start_proxy(fake_url(fake), STATIC_2048)
        raw = b'{"model":"gemma3-270m","prompt":"hi","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        direct = await post_raw(http, fake_url(fake) + "/api/generate", raw)
        proxied = await post_raw(http, proxy.url + "/api/generate", raw)
        assert proxied == direct
        assert client_requests(fake)[-1].body == raw

    async def test_lone_surrogate_survives_a_rewrite(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A lone surrogate in the prompt is written back escaped when a policy rewrites the body."""
        proxy = await start_proxy(fake_url(fake), STATIC_2048)
        raw = b'{"model":"gemma3-270m","prompt":"\\ud800 hi","stream":false}'
        status, _ = await post_raw(http, proxy.url + "/api/generate", raw)
        assert status == 200
        [body] = fake.bodies("/api/generate")
        assert (body["prompt"], body["options"]["num_ctx"]) == ("\ud800 hi", 2048)

    async def test_huge_num_ctx_is_answered_and_recorded(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """num_ctx 1e30 gets Ollama's own answer and still yields one result row."""
        store = ResultStore(tmp_path / DB_FILENAME, flush_interval_s=0.05)
        proxy = await start_proxy(
            fake_url(fake), governed('{ use = "tests.fault_policies:keeps" }'), backend=store
        )
        raw = b'{"model":"gemma3-270m","prompt":"hi","stream":false,"options":{"num_ctx":1e30}}'
        direct = await post_raw(http, fake_url(fake) + "/api/generate", raw)
        with capture_logs() as logs:
            proxied = await post_raw(http, proxy.url + "/api/generate", raw)
            await settled(proxy)
            await asyncio.to_thread(store.flush, 5.0)
        assert proxied == direct
        stored = store.recent_results()
        assert len(stored) + len(events(logs, "result_unstored")) == 1

    @pytest.mark.parametrize(
        ("policy", "error"),
        [
            ("exits", "SystemExit: 3"),
            ("stray_cancel", "CancelledError"),
            ("bad_value", "ValueError: num_ctx must be positive, not -5"),
            ("not_a_decision", "returned dict, not a Decision"),
            ("swallows_cancel", "timed out after 100 ms"),
        ],
    )
    async def test_a_broken_policy_degrades_one_decision(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession, policy: str, error: str
    ) -> None:
        """A policy that exits, raises a stray cancellation, builds a bad Decision, returns junk
        or swallows the timeout's cancellation is skipped; the next policy still applies."""
        records: list[GovernedRequest] = []
        config = governed(
            f'{{ use = "tests.fault_policies:{policy}" }}',
            '{ use = "static", num_ctx = 2048 }',
            timeout="100ms",
        )
        proxy = await start_proxy(fake_url(fake), config, sinks=[records.append])
        async with http.post(proxy.url + "/api/generate", json=GENERATE) as response:
            assert response.status == 200
        await settled(proxy)
        assert fake.bodies("/api/generate")[-1]["options"]["num_ctx"] == 2048
        [record] = records
        assert record.policy_errors == (f"tests.fault_policies:{policy}: {error}",)

    async def test_non_utf8_authorization_on_an_admin_path_is_401(
        self, fake: FakeOllama, start_proxy: StartProxy
    ) -> None:
        """Bytes that are not UTF-8 in Authorization get the admin 401, not a 500."""
        proxy = await start_proxy(fake_url(fake), 'admin_token = "s3cret"\n')
        raw = b"GET /governor/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80\r\nConnection: close\r\n\r\n"
        assert status_of(await exchange(proxy.url, raw)) == 401

    async def test_absolute_form_target_cannot_choose_the_upstream(
        self, fake: FakeOllama, start_proxy: StartProxy
    ) -> None:
        """``GET http://elsewhere/api/tags`` is answered by the configured Ollama, path and query kept."""
        proxy = await start_proxy(fake_url(fake))
        raw = b"GET http://203.0.113.9:1/api/tags?x=1 HTTP/1.1\r\nHost: 203.0.113.9\r\nConnection: close\r\n\r\n"
        assert status_of(await exchange(proxy.url, raw)) == 200
        received = client_requests(fake)[-1]
        assert (received.path, received.query) == ("/api/tags", "x=1")


class TestLoopStalls:
    """A policy that blocks the event loop is named; a threaded one blocks no one."""

    async def test_a_blocking_policy_is_named_in_loop_stall(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """``time.sleep`` on the loop is a ``policy_blocked_loop`` and a ``loop_stall`` naming it."""
        proxy = await start_proxy(
            fake_url(fake), governed('{ use = "tests.fault_policies:blocks_loop" }', timeout="2s")
        )
        with capture_logs() as logs:
            async with http.post(proxy.url + "/api/generate", json=GENERATE) as response:
                assert response.status == 200
            await eventually(lambda: events(logs, "loop_stall"), what="a loop_stall event")
        [blocked] = events(logs, "policy_blocked_loop")
        assert blocked["policy"] == "tests.fault_policies:blocks_loop"
        assert "policy tests.fault_policies:blocks_loop" in [e["step"] for e in events(logs, "loop_stall")]

    async def test_threaded_policy_runs_off_the_loop(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """The same blocking work with ``threaded = true`` is applied and holds no one up."""
        policy = '{ use = "tests.fault_policies:BlockingButThreaded", threaded = true, num_ctx = 3072 }'
        proxy = await start_proxy(fake_url(fake), governed(policy, timeout="2s"))
        with capture_logs() as logs:
            async with http.post(proxy.url + "/api/generate", json=GENERATE) as response:
                assert response.status == 200
        assert fake.bodies("/api/generate")[-1]["options"]["num_ctx"] == 3072
        assert events(logs, "policy_blocked_loop") == []
        assert [e for e in events(logs, "loop_stall") if e["step"]] == []


class TestClientFraming:
    """What a client can do to the HTTP framing itself, on raw sockets."""

    @pytest.mark.parametrize("path", ["/api/generate", "/api/show"])
    async def test_expect_100_continue(self, fake: FakeOllama, start_proxy: StartProxy, path: str) -> None:
        """The client gets 100 Continue, then Ollama's answer; Ollama never sees the Expect."""
        proxy = await start_proxy(fake_url(fake), STATIC_2048)
        body = json.dumps({**GENERATE, "model": MODEL}).encode()
        reader, writer = await asyncio.open_connection(*address(proxy.url))
        try:
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (path.encode(), len(body))
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(body)
            final = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert status_of(final) == 200
        received = client_requests(fake)[-1]
        assert received.path == path and "Expect" not in received.headers

    async def test_pipelined_requests_are_answered_in_order(
        self, fake: FakeOllama, start_proxy: StartProxy
    ) -> None:
        """Three requests in one write get three answers, in order."""
        proxy = await start_proxy(fake_url(fake), STATIC_2048)
        body = json.dumps(GENERATE).encode()
        raw = (
            b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            b"GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (len(body), body)
        )
        response = await exchange(proxy.url, raw)
        assert response.count(b"HTTP/1.1 200 OK") == 3
        versions, generate, tags = (
            response.index(b'"version"'),
            response.index(b'"done":true'),
            response.index(b'"models"'),
        )
        assert versions < generate < tags

    @pytest.mark.parametrize(
        "head",
        [
            b"Content-Length: 5\r\nTransfer-Encoding: chunked",
            b"Transfer-Encoding: xchunked",
            b"Transfer-Encoding: chunked, identity",
            b"Content-Length: 5\r\nContent-Length: 6",
            b"Content-Length: +5",
            b"Content-Length: 5 5",
        ],
        ids=["te-and-cl", "unknown-te", "chunked-not-last", "two-lengths", "signed-length", "spaced-length"],
    )
    async def test_smuggling_framings_are_refused(
        self, fake: FakeOllama, start_proxy: StartProxy, head: bytes
    ) -> None:
        """An ambiguous body framing is a 400 and nothing reaches Ollama."""
        proxy = await start_proxy(fake_url(fake), STATIC_2048)
        before = len(client_requests(fake))
        raw = (
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\n"
            + head
            + b"\r\n\r\n0\r\n\r\nGET /api/tags HTTP/1.1\r\n\r\n"
        )
        assert status_of(await exchange(proxy.url, raw)) == 400
        assert len(client_requests(fake)) == before

    async def test_a_flood_of_headers_is_refused(self, fake: FakeOllama, start_proxy: StartProxy) -> None:
        """A request with hundreds of headers is a 400, not a slow death."""
        proxy = await start_proxy(fake_url(fake))
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(500))
        raw = b"GET /api/tags HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n"
        assert status_of(await exchange(proxy.url, raw)) == 400

    @pytest.mark.parametrize(
        "target",
        [
            b"/api/../governor/status",
            b"/%2e%2e/governor/status",
            b"/governor/./status",
            b"/governor%2Fstatus",
        ],
    )
    async def test_path_tricks_do_not_bypass_admin_auth(
        self, fake: FakeOllama, start_proxy: StartProxy, target: bytes
    ) -> None:
        """Dot segments and escapes either reach the admin check (401) or go to Ollama, never past it."""
        proxy = await start_proxy(fake_url(fake), 'admin_token = "s3cret"\n')
        before = len(client_requests(fake))
        response = await exchange(
            proxy.url, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        went_to_ollama = len(client_requests(fake)) > before
        assert status_of(response) in (401, 404) or went_to_ollama
        assert b'"governor"' not in body_of(response)


class TestClientTimeouts:
    """Idle, trickling and stalled clients are cut off at the configured bounds."""

    async def test_an_idle_connection_is_closed(self, fake: FakeOllama, start_proxy: StartProxy) -> None:
        """A connection that sends nothing is closed after header_timeout."""
        proxy = await start_proxy(fake_url(fake), limits(header_timeout="300ms"))
        reader, writer = await asyncio.open_connection(*address(proxy.url))
        try:
            assert await closed_within(reader, 5.0)
        finally:
            writer.close()

    async def test_slowloris_headers_are_cut_off(self, fake: FakeOllama, start_proxy: StartProxy) -> None:
        """Headers trickled a byte at a time never complete: the connection is closed anyway."""
        proxy = await start_proxy(fake_url(fake), limits(header_timeout="300ms"))
        reader, writer = await asyncio.open_connection(*address(proxy.url))
        head = b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in head:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.02)  # the fault itself: one byte every 20 ms

        trickling = asyncio.create_task(trickle())
        try:
            assert await closed_within(reader, 5.0)
        finally:
            trickling.cancel()
            writer.close()
        assert client_requests(fake) == []

    @pytest.mark.parametrize(
        ("path", "error"),
        [
            (b"/api/generate", "the request body did not arrive within 300ms"),
            (b"/api/show", "the request body paused for more than 300ms"),
        ],
    )
    async def test_a_stalled_body_is_408(
        self, fake: FakeOllama, start_proxy: StartProxy, path: bytes, error: str
    ) -> None:
        """A body that stops arriving gets 408 in Ollama's shape after body_timeout, governed
        (read whole first) or relayed (streamed to Ollama)."""
        proxy = await start_proxy(fake_url(fake), limits(body_timeout="300ms") + STATIC_2048)
        raw = b"POST " + path + b' HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"model": "gemma3'
        response = await first_response(proxy.url, raw)
        assert status_of(response) == 408
        assert json.loads(body_of(response)) == {"error": error}


class TestBodyLimit:
    """A body above max_governed_body streams through ungoverned; below it, it is governed."""

    @pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
    async def test_a_large_body_is_relayed_as_it_is(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession, chunked: bool
    ) -> None:
        """Above the limit the client's bytes reach Ollama unchanged (not refused), with a warning."""
        proxy = await start_proxy(fake_url(fake), limits(max_governed_body="64KiB") + STATIC_2048)
        raw = json.dumps({**GENERATE, "prompt": "x" * 100_000}).encode()

        async def pieces() -> Any:
            for start in range(0, len(raw), 10_000):
                yield raw[start : start + 10_000]

        with capture_logs() as logs:
            async with http.post(proxy.url + "/api/generate", data=pieces() if chunked else raw) as response:
                assert response.status == 200
        assert client_requests(fake)[-1].body == raw
        [warning] = events(logs, "not_governed")
        assert warning["reason"] == "body too large to govern"

    @pytest.mark.parametrize("size", [60_000, 100_000], ids=["within", "above"])
    async def test_a_body_sent_with_its_head_is_judged_by_its_size(
        self, fake: FakeOllama, start_proxy: StartProxy, size: int
    ) -> None:
        """A chunked body that arrives in the same write as the head (read without waiting) is
        governed within the limit and relayed byte for byte above it."""
        proxy = await start_proxy(fake_url(fake), limits(max_governed_body="64KiB") + STATIC_2048)
        raw = json.dumps({**GENERATE, "prompt": "x" * size}).encode()
        head = b"POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        response = await first_response(proxy.url, head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(raw), raw))
        assert status_of(response) == 200
        sent = client_requests(fake)[-1].body
        if size > 64 * 1024:
            assert sent == raw
        else:
            assert json.loads(sent)["options"]["num_ctx"] == 2048

    async def test_a_body_within_the_limit_is_governed(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """At the limit's edge the body is still parsed and rewritten."""
        proxy = await start_proxy(fake_url(fake), limits(max_governed_body="64KiB") + STATIC_2048)
        async with http.post(
            proxy.url + "/api/generate", json={**GENERATE, "prompt": "x" * 60_000}
        ) as response:
            assert response.status == 200
        assert fake.bodies("/api/generate")[-1]["options"]["num_ctx"] == 2048


async def _never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


async def _stalls_after_one_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(NDJSON_HEAD + chunk(b'{"model":"m","response":"a","done":false}\n'))
    await writer.drain()
    await asyncio.sleep(3600)


async def _slow_but_steady(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Eight lines 150 ms apart: 1.2 s in all, four times a 300 ms idle bound, no pause above it."""
    writer.write(NDJSON_HEAD)
    for n in range(8):
        writer.write(chunk(b'{"model":"m","response":"%d","done":false}\n' % n))
        await writer.drain()
        await asyncio.sleep(0.15)
    writer.write(chunk(b'{"model":"m","response":"","done":true}\n') + b"0\r\n\r\n")
    await writer.drain()


async def _trickles_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n")
    while True:
        writer.write(b"X-More: yes\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)


async def _header_too_long(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nX-Huge: " + b"UPSTREAMSECRET" * 10_000 + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    await writer.drain()


async def _early_hints_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = done_line()
    writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    await writer.drain()


async def _no_content_type(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    await writer.drain()


async def _invalid_final_object(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(
        NDJSON_HEAD
        + chunk(b'{"model":"m","response":"a","done":false}\n')
        + chunk(b'{"done": tru\n')
        + b"0\r\n\r\n"
    )
    await writer.drain()


class TestUpstreamFaults:
    """An upstream that is gone, slow, stalls, or speaks broken HTTP gets a bounded, clear answer."""

    async def test_refused_is_502_in_ollamas_shape(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Nothing listening: 502 with the upstream named, for governed and passthrough paths."""
        port = free_port()
        proxy = await start_proxy(f"http://127.0.0.1:{port}", STATIC_2048)
        proxy.app[UPSTREAM].retry_window_s = 0.2
        for path, payload in (("/api/tags", None), ("/api/generate", GENERATE)):
            async with http.request("POST" if payload else "GET", proxy.url + path, json=payload) as response:
                assert response.status == 502
                assert (await response.json())["error"].startswith(
                    f"upstream Ollama at http://127.0.0.1:{port}"
                )

    async def test_restarting_ollama_is_ridden_over(
        self, start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Connection refused before anything was sent is retried until Ollama is back."""
        port = free_port()
        proxy = await start_proxy(f"http://127.0.0.1:{port}", STATIC_2048)
        comeback = asyncio.create_task(_start_later(start_fake, port))
        async with http.post(proxy.url + "/api/generate", json=GENERATE) as response:
            assert response.status == 200
        await comeback

    async def test_death_mid_stream_ends_with_an_error_line_and_a_result(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Ollama dying mid-stream: the client gets Ollama's error line; the result says incomplete."""

        async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(NDJSON_HEAD + chunk(b'{"model":"m","response":"a","done":false}\n'))
            await writer.drain()
            writer.transport.abort()

        records: list[GovernedRequest] = []
        async with hostile_upstream(dies) as upstream:
            proxy = await start_proxy(upstream.url, STATIC_2048, sinks=[records.append])
            async with http.post(proxy.url + "/api/generate", json={**GENERATE, "stream": True}) as response:
                lines = (await response.read()).splitlines()
            await settled(proxy)
        assert json.loads(lines[-1])["error"].startswith("upstream closed the stream")
        [record] = records
        assert (record.status, record.completed) == (200, False)

    async def test_no_answer_is_504_within_first_byte_timeout(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """An upstream that never answers: 504 in Ollama's shape, recorded as such."""
        records: list[GovernedRequest] = []
        async with hostile_upstream(_never_answers) as upstream:
            proxy = await start_proxy(
                upstream.url, limits(first_byte_timeout="300ms") + STATIC_2048, sinks=[records.append]
            )
            async with http.post(proxy.url + "/api/generate", json=GENERATE) as response:
                assert response.status == 504
                assert (await response.json())["error"].endswith("did not answer within 300ms")
            await settled(proxy)
        assert [(r.status, r.completed) for r in records] == [(504, False)]

    async def test_never_ending_headers_are_bounded(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Headers that keep coming and never end are cut at the first-byte timeout."""
        async with hostile_upstream(_trickles_headers) as upstream:
            proxy = await start_proxy(upstream.url, limits(first_byte_timeout="300ms"))
            async with http.get(proxy.url + "/api/tags") as response:
                assert response.status in (502, 504)
                assert "error" in await response.json()

    async def test_a_stall_mid_stream_is_ended_at_the_idle_timeout(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """One line, then silence: the stream ends with Ollama's error line after stream_idle_timeout."""
        records: list[GovernedRequest] = []
        async with hostile_upstream(_stalls_after_one_line) as upstream:
            config = limits(stream_idle_timeout="300ms") + STATIC_2048
            proxy = await start_proxy(upstream.url, config, sinks=[records.append])
            async with http.post(proxy.url + "/api/generate", json={**GENERATE, "stream": True}) as response:
                lines = (await response.read()).splitlines()
            await settled(proxy)
        assert json.loads(lines[-1]) == {"error": "upstream closed the stream: no data for 300ms"}
        assert [r.completed for r in records] == [False]

    async def test_the_idle_timeout_bounds_each_pause_not_the_stream(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A stream longer than stream_idle_timeout whose pauses stay below it is relayed whole,
        and the stall after it is still caught: the one timer re-arms at each read's deadline."""
        records: list[GovernedRequest] = []
        async with hostile_upstream(_slow_but_steady) as upstream:
            config = limits(stream_idle_timeout="300ms") + STATIC_2048
            proxy = await start_proxy(upstream.url, config, sinks=[records.append])
            async with http.post(proxy.url + "/api/generate", json={**GENERATE, "stream": True}) as response:
                lines = [json.loads(line) for line in (await response.read()).splitlines()]
            await settled(proxy)
        assert [line["response"] for line in lines] == [str(n) for n in range(8)] + [""]
        assert lines[-1]["done"] is True
        assert [(r.completed, r.error) for r in records] == [(True, None)]

    async def test_unbounded_paths_wait_past_the_timeouts(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A pull answers when it is done, however long that takes: no first-byte timeout there."""
        released = asyncio.Event()

        async def slow_pull(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await released.wait()
            writer.write(
                b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{"status":"success"}'
            )
            await writer.drain()

        async with hostile_upstream(slow_pull) as upstream:
            proxy = await start_proxy(
                upstream.url, limits(first_byte_timeout="200ms", stream_idle_timeout="200ms")
            )
            pull = asyncio.create_task(
                http.post(proxy.url + "/api/pull", json={"model": MODEL, "stream": False})
            )
            await asyncio.sleep(0.5)  # the fault: the upstream is slower than both timeouts
            released.set()
            response = await pull
            assert response.status == 200
            assert await response.json() == {"status": "success"}
            response.release()

    async def test_bad_chunked_encoding_mid_stream(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Broken framing from Ollama ends the stream with the error line; its bytes are not quoted.

        (aiohttp's C parser drops such a body without failing it, so the stream idle timeout is
        what ends it; the pure-Python parser fails it at once.)"""
        first_line_read = asyncio.Event()

        async def breaks_framing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(NDJSON_HEAD + chunk(b'{"model":"m","response":"a","done":false}\n'))
            await writer.drain()
            await first_line_read.wait()
            writer.write(b"ZZ-UPSTREAMSECRET\r\nnot a chunk\r\n")
            await writer.drain()

        async with hostile_upstream(breaks_framing) as upstream:
            proxy = await start_proxy(upstream.url, limits(stream_idle_timeout="300ms") + STATIC_2048)
            with capture_logs() as logs:
                async with http.post(
                    proxy.url + "/api/generate", json={**GENERATE, "stream": True}
                ) as response:
                    first = await response.content.readline()
                    first_line_read.set()
                    body = first + await response.read()
        error = json.loads(body.splitlines()[-1])["error"]
        assert error.startswith("upstream closed the stream: ")
        assert b"UPSTREAMSECRET" not in body and "UPSTREAMSECRET" not in repr(logs)

    async def test_an_oversized_upstream_header_is_502_without_its_bytes(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A header line past aiohttp's limit is a 502 that does not repeat the header."""
        async with hostile_upstream(_header_too_long) as upstream:
            proxy = await start_proxy(upstream.url)
            async with http.get(proxy.url + "/api/tags") as response:
                assert response.status == 502
                assert "UPSTREAMSECRET" not in await response.text()

    async def test_informational_responses_are_skipped(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A 103 Early Hints before the answer: the client gets the final 200."""
        async with hostile_upstream(_early_hints_first) as upstream:
            proxy = await start_proxy(upstream.url, STATIC_2048)
            async with http.post(proxy.url + "/api/generate", json=GENERATE) as response:
                assert response.status == 200
                assert (await response.json())["done"] is True

    async def test_an_answer_without_content_type_is_relayed(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """No Content-Type from Ollama: the bytes still arrive as they were."""
        async with hostile_upstream(_no_content_type) as upstream:
            proxy = await start_proxy(upstream.url)
            async with http.get(proxy.url + "/api/tags") as response:
                assert (response.status, await response.read()) == (200, b"hello")

    async def test_an_invalid_final_object_is_relayed_and_recorded(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A final line that is not JSON reaches the client; the result has no figures, not an error."""
        records: list[GovernedRequest] = []
        async with hostile_upstream(_invalid_final_object) as upstream:
            proxy = await start_proxy(upstream.url, STATIC_2048, sinks=[records.append])
            async with http.post(proxy.url + "/api/generate", json={**GENERATE, "stream": True}) as response:
                body = await response.read()
            await settled(proxy)
        assert body.endswith(b'{"done": tru\n')
        [record] = records
        assert (record.status, record.completed, record.eval_tokens) == (200, True, None)

    async def test_a_huge_single_line_is_relayed_intact(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A 40 MiB line (beyond what the tap parses) is relayed whole; the result is still recorded."""
        huge = b'{"model":"m","response":"' + b"x" * (40 << 20) + b'","done":false}\n'

        async def floods(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(NDJSON_HEAD)
            for start in range(0, len(huge), 1 << 20):
                writer.write(chunk(huge[start : start + (1 << 20)]))
                await writer.drain()
            writer.write(chunk(done_line()) + b"0\r\n\r\n")
            await writer.drain()

        records: list[GovernedRequest] = []
        async with hostile_upstream(floods) as upstream:
            proxy = await start_proxy(upstream.url, STATIC_2048, sinks=[records.append])
            async with http.post(proxy.url + "/api/generate", json={**GENERATE, "stream": True}) as response:
                body = await response.read()
            await settled(proxy)
        assert body == huge + done_line()
        [record] = records
        assert (record.completed, record.eval_tokens) == (True, 4)


class TestTranslatedRoutes:
    """The /v1 routes, translated to native calls, are bounded the same way, in their own shape."""

    HI = b'"messages":[{"role":"user","content":"hi"}],"max_tokens":5'

    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
    @pytest.mark.parametrize(
        ("extra", "status"),
        [
            (b'"x":' + b"[" * 100_000 + b"]" * 100_000, 400),  # past Go's 10 000 levels: its error
            (b'"x":' + b"[" * 5_000 + b"]" * 5_000, 200),  # Go reads it; sent untranslated
            (b'"temperature":1e400', 400),  # past float64: Go's decoder fails the body
        ],
        ids=["100k deep", "5k deep", "1e400"],
    )
    async def test_bodies_go_refuses_or_reads_as_ollama_does(
        self,
        fake: FakeOllama,
        start_proxy: StartProxy,
        http: aiohttp.ClientSession,
        path: str,
        extra: bytes,
        status: int,
    ) -> None:
        """The same status and message as Ollama alone, in the route's shape, never our 500."""
        proxy = await start_proxy(fake_url(fake), STATIC_2048)
        raw = b'{"model":"gemma3-270m",' + self.HI + b"," + extra + b"}"
        direct_status, direct = await post_raw(http, fake_url(fake) + path, raw)
        proxied_status, proxied = await post_raw(http, proxy.url + path, raw)
        assert proxied_status == direct_status == status
        if status == 400:
            assert proxied == direct or proxied["message"] == direct["message"]  # type: ignore[index]

    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/completions"])
    @pytest.mark.parametrize(
        "text", [b"hi \\ud800 there", b"hi \xff\xfe there"], ids=["lone surrogate", "bad UTF-8"]
    )
    async def test_text_go_repairs_is_answered(
        self,
        fake: FakeOllama,
        start_proxy: StartProxy,
        http: aiohttp.ClientSession,
        path: str,
        text: bytes,
    ) -> None:
        """Go decodes a lone surrogate escape and invalid UTF-8 in a string as U+FFFD and answers
        200; translated, so does the governor, and Ollama gets valid UTF-8."""
        proxy = await start_proxy(fake_url(fake), STATIC_2048)
        content = (
            b'"prompt":"%s"' % text
            if path == "/v1/completions"
            else b'"messages":[{"role":"user","content":"%s"}]' % text
        )
        raw = b'{"model":"gemma3-270m","max_tokens":5,' + content + b"}"
        assert (await post_raw(http, fake_url(fake) + path, raw))[0] == 200
        assert (await post_raw(http, proxy.url + path, raw))[0] == 200
        sent = client_requests(fake)[-1].body
        assert "\ufffd" in sent.decode("utf-8")

    async def test_no_answer_is_504_in_openai_shape(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """An upstream that never answers a translated chat: 504 as an OpenAI error, recorded."""
        records: list[GovernedRequest] = []
        async with hostile_upstream(_never_answers) as upstream:
            proxy = await start_proxy(
                upstream.url, limits(first_byte_timeout="300ms") + STATIC_2048, sinks=[records.append]
            )
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(proxy.url + "/v1/chat/completions", json=body) as response:
                assert response.status == 504
                error = (await response.json())["error"]
            await settled(proxy)
        assert error["message"].endswith("did not answer within 300ms") and error["type"] == "api_error"
        assert [(r.status, r.completed) for r in records] == [(504, False)]

    async def test_a_stall_mid_stream_ends_the_translated_stream(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A translated stream whose native answer falls silent is ended and recorded incomplete."""

        async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = b'{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n'
            writer.write(NDJSON_HEAD + chunk(line))
            await writer.drain()
            await asyncio.sleep(3600)

        records: list[GovernedRequest] = []
        async with hostile_upstream(stalls) as upstream:
            config = limits(stream_idle_timeout="300ms") + STATIC_2048
            proxy = await start_proxy(upstream.url, config, sinks=[records.append])
            body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(proxy.url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200
                await response.read()
            await settled(proxy)
        [record] = records
        assert (record.completed, record.error) == (False, "upstream closed the stream: no data for 300ms")


async def _start_later(start_fake: StartFake, port: int) -> None:
    await asyncio.sleep(0.3)  # the fault: Ollama is down for a moment
    await start_fake(port=port, version="0.33.0-rc2")


async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve the first request of each connection keep-alive; drop the connection at the second."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await read_head(reader)
        writer.transport.abort()
    writer.close()


@contextlib.asynccontextmanager
async def dropping_upstream(
    on_connection: Callable[[asyncio.StreamReader], None],
) -> AsyncIterator[Upstream]:
    """An open ``Upstream`` in front of a server that drops each connection at its second request
    (as a restarted Ollama leaves pooled connections); ``on_connection`` sees each new one first."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        on_connection(reader)
        await one_answer_per_connection(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream = Upstream(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", retry_window_s=2.0)
    upstream.open()
    try:
        yield upstream
    finally:
        await upstream.close()
        server.close()


class TestDroppedConnections:
    """A pooled connection Ollama dropped (it restarted) costs a replay, not a 502, when that is safe."""

    @pytest.mark.parametrize(
        ("method", "path", "body", "replayed"),
        [
            ("GET", "/api/tags", None, True),
            ("POST", "/api/generate", b'{"model":"m"}', True),
            ("POST", "/api/pull", b'{"model":"m"}', False),
            ("POST", "/api/copy", b'{"source":"a","destination":"b"}', False),
        ],
    )
    async def test_only_replay_safe_requests_are_sent_again(
        self, method: str, path: str, body: bytes | None, replayed: bool
    ) -> None:
        """GETs and inference requests are replayed on a fresh connection; a pull or a copy is not."""
        heads: list[bytes] = []

        def record_heads(reader: asyncio.StreamReader) -> None:
            original = reader.readuntil

            async def recording(separator: bytes = b"\n") -> bytes:
                data = await original(separator)
                heads.append(data)
                return data

            reader.readuntil = recording  # type: ignore[method-assign]

        async with dropping_upstream(record_heads) as upstream:
            (await upstream.send("GET", "/api/version")).release()
            if replayed:
                response = await upstream.send(method, path, data=body)
                assert response.status == 200
                response.release()
            else:
                with pytest.raises(UpstreamUnavailable):
                    await upstream.send(method, path, data=body)
        assert len(heads) == (3 if replayed else 2)

    async def test_a_replay_after_a_restart_goes_on_a_fresh_connection(self) -> None:
        """Every pooled connection is stale after Ollama restarts: the replay opens a new one
        instead of taking the next stale one (which dropped it too, and answered 502)."""
        connections: list[asyncio.StreamReader] = []
        async with dropping_upstream(connections.append) as upstream:
            warm = await asyncio.gather(*(upstream.send("GET", "/api/version") for _ in range(2)))
            for response in warm:
                await response.read()
                response.release()
            assert len(connections) == 2  # two pooled connections, each dropped at its next request
            response = await upstream.send("POST", "/api/chat", data=b'{"model":"m"}')
            assert response.status == 200
            response.release()
        assert len(connections) == 3


class TestOwnBugs:
    """A bug of ours is not hidden as an upstream error, and still leaves one result."""

    async def test_a_failing_tap_is_a_handler_error_not_an_upstream_one(
        self,
        fake: FakeOllama,
        start_proxy: StartProxy,
        http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """An exception in our own streaming code is logged as ours (class only) and recorded."""

        def broken_feed(self: object, chunk: bytes) -> None:
            raise ValueError("OWNSECRET")

        monkeypatch.setattr("proxy.upstream.tap.FinalObjectTap.feed", broken_feed)
        records: list[GovernedRequest] = []
        proxy = await start_proxy(fake_url(fake), STATIC_2048, sinks=[records.append])
        with capture_logs() as logs:
            with pytest.raises(aiohttp.ClientError):
                async with http.post(
                    proxy.url + "/api/generate", json={**GENERATE, "stream": True}
                ) as response:
                    await response.read()
            await eventually(lambda: records, what="the result")
        assert events(logs, "upstream_stream_error") == []
        [error] = events(logs, "handler_error")
        assert error["error"] == "ValueError"
        assert "OWNSECRET" not in repr(logs)
        assert (records[0].status, records[0].completed) == (500, False)


class TestLoad:
    """Many requests at once, and reloads under load: every one answered, every result kept."""

    async def test_a_thousand_concurrent_requests_lose_nothing(
        self, fake: FakeOllama, start_proxy: StartProxy
    ) -> None:
        """1000 governed chats at once: 1000 complete answers and 1000 results."""
        records: list[GovernedRequest] = []
        proxy = await start_proxy(fake_url(fake), STATIC_2048, sinks=[records.append])
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def one(i: int) -> bool:
                body = {**CHAT, "messages": [{"role": "user", "content": f"hi {i}"}]}
                async with http.post(proxy.url + "/api/chat", json=body) as response:
                    lines = (await response.read()).splitlines()
                    return response.status == 200 and json.loads(lines[-1])["done"] is True

            answered = await asyncio.gather(*(one(i) for i in range(1000)))
        await settled(proxy)
        assert sum(answered) == 1000
        assert len(records) == 1000
        assert {r.applied_num_ctx for r in records} == {2048}

    async def test_reloads_under_load_drop_nothing(
        self, start_fake: StartFake, start_proxy: StartProxy, tmp_path: Path
    ) -> None:
        """Streams in flight while the config is reloaded twenty times all finish and are recorded."""
        records: list[GovernedRequest] = []
        fake = await start_fake(version="0.33.0-rc2", num_parallel=50)
        fake.hold = asyncio.Event()
        proxy = await start_proxy(fake_url(fake), STATIC_2048, sinks=[records.append])
        config_path = next(tmp_path.glob("config*.toml"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            streams = [await http.post(proxy.url + "/api/chat", json=CHAT) for _ in range(50)]
            for response in streams:
                await asyncio.wait_for(response.content.readline(), 10)
            for i in range(20):
                config_path.write_text(STATIC_2048.replace("2048", str(2048 + 1024 * (i % 2))))
                assert reload(proxy.app)
            fake.hold.set()
            bodies = [await response.read() for response in streams]
            for response in streams:
                response.release()
        await settled(proxy)
        assert all(json.loads(b.splitlines()[-1])["done"] is True for b in bodies)
        assert len(records) == 50


class TestReloadedLimits:
    async def test_limits_apply_at_the_next_start(
        self, fake: FakeOllama, start_proxy: StartProxy, tmp_path: Path
    ) -> None:
        """A reload that changes [limits] keeps the running ones and says so."""
        proxy = await start_proxy(fake_url(fake), limits(drain_timeout="5s"))
        next(tmp_path.glob("config*.toml")).write_text(limits(drain_timeout="9s"))
        with capture_logs() as logs:
            assert reload(proxy.app)
        [deferred] = events(logs, "reload_deferred")
        assert deferred["settings"] == ["[limits]"]
        assert proxy.app[PIPELINE].governor.config.limits.drain_timeout_s == 5.0


class TestStoreFaults:
    """A store that cannot write loses no request and no result: results go to the log."""

    async def test_a_corrupted_database(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """results.db that is not SQLite: requests answered, every result logged instead."""
        path = tmp_path / DB_FILENAME
        path.write_bytes(b"garbage, not a database" * 100)
        store = ResultStore(path, flush_interval_s=0.05)
        proxy = await start_proxy(fake_url(fake), STATIC_2048, backend=store)
        with capture_logs() as logs:
            for _ in range(5):
                async with http.post(proxy.url + "/api/generate", json=GENERATE) as response:
                    assert response.status == 200
            await settled(proxy)
            await asyncio.to_thread(store.flush, 5.0)
        assert store.degraded
        assert len(events(logs, "result_unstored")) == 5
        assert path.read_bytes() == b"garbage, not a database" * 100

    async def test_a_full_disk(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """SQLITE_FULL while serving: requests answered, each result stored or logged."""

        class FullDiskStore(ResultStore):
            def _connect(self) -> sqlite3.Connection:
                conn = super()._connect()
                conn.execute("PRAGMA max_page_count = 12")  # room for the schema only
                return conn

        store = FullDiskStore(tmp_path / DB_FILENAME, flush_interval_s=0.02, batch_size=20)
        proxy = await start_proxy(fake_url(fake), STATIC_2048, backend=store)

        async def one() -> int:
            async with http.post(proxy.url + "/api/generate", json=GENERATE) as response:
                return response.status

        with capture_logs() as logs:
            statuses = await asyncio.gather(*(one() for _ in range(400)))
            await settled(proxy)
            await asyncio.to_thread(store.flush, 5.0)
        assert statuses == [200] * 400
        assert store.degraded
        assert len(store.recent_results(limit=1000)) + len(events(logs, "result_unstored")) == 400


class TestRelayedErrors:
    """Unit checks of the relay's error endings, plain data in."""

    @pytest.mark.parametrize(
        ("path", "content_type", "ending"),
        [
            ("/api/chat", "application/x-ndjson", b'{"error": "boom"}\n'),
            (
                "/v1/chat/completions",
                "text/event-stream",
                b'data: {"error": {"message": "boom", "type": "api_error", "param": null, "code": null}}\n\n',
            ),
            (
                "/v1/messages",
                "text/event-stream",
                b'event: error\ndata: {"type": "error", "error": {"type": "api_error", "message": "boom"}}\n\n',
            ),
            ("/api/tags", "application/json", None),
        ],
    )
    def test_a_broken_stream_ends_in_its_routes_framing(
        self, path: str, content_type: str, ending: bytes | None
    ) -> None:
        """NDJSON gets Ollama's error line, SSE its route's error event, anything else nothing."""
        from proxy.upstream.relay import error_ending

        assert error_ending(path, content_type, "boom") == ending
