"""The governed /v1 routes on the wire: recorded shapes, SSE framing and timing, errors, what is
left untouched, and thinking on /v1/messages.

Why: a client must not be able to tell the governor from Ollama on these routes. The recorded
exchanges with a real Ollama 0.33 (tests/data/ollama-0.33/v1_*.txt) fix the bodies, event
sequences, headers and errors; the fake follows them, so the governed path is compared with both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from proxy.compat import ROUTES
from proxy.facts.memory import NoGpuSource
from proxy.keys import UPSTREAM
from tests.conftest import (
    Running,
    StartFake,
    StartProxy,
    client_requests,
    eventually,
    free_port,
    settled,
    start_app,
)
from tests.fake_ollama import FakeModel, FakeOllama, gemma3_4b, gemma3_270m, llama3_1_8b, nomic_embed_text
from tests.transcripts import exchange, shape

STATIC = """
    [ollama]
    ps_interval = "10s"

    [[rules]]
    models = ["*"]
    policies = [{ use = "static", num_ctx = 8192, keep_alive = "10m" }]
"""
HI = [{"role": "user", "content": "hi"}]
EVENT_STREAM_HEADERS = ("Content-Type", "Cache-Control", "Connection")
WHOLE = [
    "v1_chat_completions_nostream.txt",
    "v1_completions_nostream.txt",
    "v1_responses_nostream.txt",
    "v1_messages_nostream_no_headers.txt",
    "v1_messages_nostream_anthropic_headers.txt",
]
STREAMS = [
    "v1_chat_completions_stream.txt",
    "v1_chat_completions_stream_include_usage.txt",
    "v1_completions_stream.txt",
    "v1_responses_stream.txt",
    "v1_messages_stream.txt",
]
STREAMED_REQUESTS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gemma3-270m", "messages": HI, "stream": True},
    "/v1/completions": {"model": "gemma3-270m", "prompt": "hi", "stream": True},
    "/v1/responses": {"model": "gemma3-270m", "input": "hi", "stream": True},
    "/v1/messages": {"model": "gemma3-270m", "max_tokens": 8, "messages": HI, "stream": True},
}

FIRST_FRAME = {
    "/v1/chat/completions": b"data: {",
    "/v1/completions": b"data: {",
    "/v1/responses": b"event: response.created\n",
    "/v1/messages": b"event: message_start\n",
}
LAST_FRAME = {
    "/v1/chat/completions": "data: [DONE]",
    "/v1/completions": "data: [DONE]",
    "/v1/responses": "event: response.completed\n",
    "/v1/messages": "event: message_stop\n",
}


@pytest.fixture
async def fake(start_fake: StartFake) -> FakeOllama:
    """The 0.33 fake as the recordings' checks run it, with a tools, a vision and an embedding model."""
    return await start_fake(
        reply_tokens=6, models=[gemma3_270m(), llama3_1_8b(), gemma3_4b(), nomic_embed_text()]
    )


@pytest.fixture
async def proxy(fake: FakeOllama, start_proxy: StartProxy) -> Running:
    """The governor with the static rule in front of ``fake``."""
    return await start_proxy(fake.url, STATIC, memory_source=NoGpuSource("test host"))  # type: ignore[attr-defined]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session


@dataclasses.dataclass(frozen=True)
class Reply:
    """One HTTP answer as plain data."""

    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


async def post(http: aiohttp.ClientSession, url: str, body: bytes | Any, **headers: str) -> Reply:
    """POST raw bytes (or JSON for anything else) and read the whole answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(url, data=data, headers={"Content-Type": "application/json", **headers}) as response:
        return Reply(response.status, dict(response.headers), await response.read())


def frames(body: bytes) -> list[str]:
    """The SSE frames of a stream; every frame must end in a blank line."""
    text = body.decode()
    assert text.endswith("\n\n"), "the stream must end with a complete frame"
    return text[:-2].split("\n\n")


def frame_shape(frame: str) -> list[Any]:
    """An SSE frame's lines: ``event:`` names as they are, ``data:`` JSON by its shape."""
    out: list[Any] = []
    for line in frame.split("\n"):
        field, _, value = line.partition(": ")
        if field == "data" and value != "[DONE]":
            out.append(("data", shape(json.loads(value))))
        else:
            out.append((field, value))
    return out


def recorded_frames(name: str) -> list[str]:
    return frames("\n".join(exchange(name).lines).encode() + b"\n")


RANDOM_IDS = re.compile(rb'"(?:(id|request_id|item_id)":"[a-z]+[_-])[0-9a-f]+"|"created(?:_at)?":\d+')


def without_ids(body: bytes) -> bytes:
    """A body with the ids and clocks Ollama mints per request blanked out."""
    return RANDOM_IDS.sub(b"<id>", body)


class TestRecordedShapes:
    @pytest.mark.parametrize("name", WHOLE)
    async def test_whole_answers_as_recorded(
        self, name: str, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """The recorded request through the governor: status, Content-Type, a body ending in a
        newline with the recorded keys in order and their types; it reached Ollama as native."""
        ex = exchange(name)
        reply = await post(http, proxy.url + ex.path, ex.request_json, **ex.request_headers)
        assert (reply.status, reply.header("Content-Type")) == (ex.status, ex.headers["Content-Type"])
        assert reply.body.endswith(b"\n") and shape(json.loads(reply.body)) == shape(ex.json())
        assert [r.path for r in client_requests(fake)] == [ROUTES[ex.path].native_path]

    @pytest.mark.parametrize("name", STREAMS)
    async def test_streams_as_recorded(
        self, name: str, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """The recorded stream request through the governor: the same headers, the same frames
        (``event:`` names, ``data:`` shapes, blank-line framing, ``[DONE]`` where Ollama ends with it)."""
        ex = exchange(name)
        reply = await post(http, proxy.url + ex.path, ex.request_json, **ex.request_headers)
        assert reply.status == ex.status
        assert {h: reply.header(h) for h in EVENT_STREAM_HEADERS} == {
            h: ex.headers.get(h) for h in EVENT_STREAM_HEADERS
        }
        assert reply.header("Transfer-Encoding") == "chunked"
        assert [frame_shape(f) for f in frames(reply.body)] == [frame_shape(f) for f in recorded_frames(name)]
        assert (frames(reply.body)[-1] == "data: [DONE]") == (recorded_frames(name)[-1] == "data: [DONE]")
        assert [r.path for r in client_requests(fake)] == [ROUTES[ex.path].native_path]

    async def test_recorded_errors(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """The recorded refusals (no max_tokens on /v1/messages; embeddings on a model that has
        none) come back with the recorded status, Content-Type and body."""
        for name in ("v1_messages_no_max_tokens.txt", "v1_embeddings.txt"):
            ex = exchange(name)
            reply = await post(http, proxy.url + ex.path, ex.request_json)
            assert (reply.status, reply.header("Content-Type")) == (ex.status, ex.headers["Content-Type"])
            assert without_ids(reply.body) == without_ids(ex.body.encode())


class TestStreamsAreNotBuffered:
    @pytest.mark.parametrize("path", sorted(STREAMED_REQUESTS))
    async def test_first_event_arrives_while_ollama_still_holds_the_rest(
        self, path: str, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """The fake sends the first native line and then waits; the client reads the first SSE
        event before the fake goes on, so the translation buffers nothing."""
        fake.hold = asyncio.Event()
        async with http.post(proxy.url + path, json=STREAMED_REQUESTS[path]) as response:
            first = b""
            while not first.endswith(b"\n\n"):
                first += await asyncio.wait_for(response.content.readline(), timeout=5)
            assert not fake.hold.is_set()
            fake.hold.set()
            rest = await response.read()
        assert first.startswith(FIRST_FRAME[path]) and frames(first + rest)[-1].startswith(LAST_FRAME[path])


class TestErrorsAsOllamaSendsThem:
    CASES: tuple[tuple[str, bytes], ...] = (
        (
            "/v1/chat/completions",
            b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}',
        ),
        (
            "/v1/chat/completions",
            b'{"model": "no-such-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]}',
        ),
        ("/v1/completions", b'{"model": "no-such-model", "prompt": "hi"}'),
        ("/v1/embeddings", b'{"model": "no-such-model", "input": "hi"}'),
        ("/v1/responses", b'{"model": "no-such-model", "input": "hi"}'),
        ("/v1/responses", b'{"model": "no-such-model", "input": "hi", "stream": true}'),
        (
            "/v1/messages",
            b'{"model": "no-such-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}',
        ),
        (
            "/v1/messages",
            b'{"model": "no-such-model", "max_tokens": 5, "stream": true, "messages": [{"role": "user", "content": "hi"}]}',
        ),
        ("/v1/chat/completions", b'{"model": "gemma3-270m", "messages": [{"role": "user", "content": "hi"}'),
        ("/v1/messages", b'{"model": '),
        ("/v1/chat/completions", b""),
        ("/v1/chat/completions", b'{"model": "gemma3-270m", "messages": "hi"}'),
        (
            "/v1/chat/completions",
            b'{"model": "gemma3-270m", "max_tokens": "5", "messages": [{"role": "user", "content": "hi"}]}',
        ),
        ("/v1/chat/completions", b'{"model": "gemma3-270m", "messages": [{"role": "user", "content": 5}]}'),
        ("/v1/chat/completions", b'{"model": "gemma3-270m", "messages": []}'),
        (
            "/v1/chat/completions",
            b'{"model": "gemma3-270m", "tools": [{"type": "function", "function": {"name": "f"}}], "messages": [{"role": "user", "content": "hi"}]}',
        ),
        ("/v1/completions", b'{"model": "gemma3-270m", "prompt": 5}'),
        ("/v1/embeddings", b'{"model": "nomic-embed-text", "input": "x", "encoding_format": "hex"}'),
        ("/v1/embeddings", b'{"model": "nomic-embed-text", "input": []}'),
        ("/v1/messages", b'{"model": "gemma3-270m", "messages": [{"role": "user", "content": "hi"}]}'),
        (
            "/v1/messages",
            b'{"model": "gemma3-270m", "max_tokens": "5", "messages": [{"role": "user", "content": "hi"}]}',
        ),
        ("/v1/messages", b'{"model": "gemma3-270m", "max_tokens": 5, "messages": []}'),
        ("/v1/messages", b'{"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'),
    )

    @pytest.mark.parametrize(("path", "body"), CASES, ids=[f"{p} {b[:60]!r}" for p, b in CASES])
    async def test_same_status_headers_and_body_as_direct(
        self, path: str, body: bytes, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """Unknown models, broken JSON, fields of the wrong type and missing fields: the
        governor answers with Ollama's status, Content-Type, event-stream headers and body."""
        direct = await post(http, fake.url + path, body)  # type: ignore[attr-defined]
        governed = await post(http, proxy.url + path, body)
        assert direct.status >= 400
        assert (governed.status, without_ids(governed.body)) == (direct.status, without_ids(direct.body))
        for name in EVENT_STREAM_HEADERS:
            assert governed.header(name) == direct.header(name), name

    async def test_a_policy_refusal_in_each_routes_shape(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A policy's rejection is a 400 in the route's own error shape, and nothing reaches Ollama."""
        refusing = await start_proxy(
            fake.url,  # type: ignore[attr-defined]
            '[[rules]]\nmodels = ["*"]\npolicies = [{ use = "tests.test_compat_wire:refuse" }]',
            memory_source=NoGpuSource("test host"),
        )
        openai_reply = await post(
            http, refusing.url + "/v1/chat/completions", {"model": "gemma3-270m", "messages": HI}
        )
        assert (openai_reply.status, json.loads(openai_reply.body)) == (
            400,
            {"error": {"message": "not today", "type": "invalid_request_error", "param": None, "code": None}},
        )
        claude_reply = await post(
            http, refusing.url + "/v1/messages", {"model": "gemma3-270m", "max_tokens": 2, "messages": HI}
        )
        error = json.loads(claude_reply.body)
        assert (claude_reply.status, error["type"], error["error"]) == (
            400,
            "error",
            {"type": "invalid_request_error", "message": "not today"},
        )
        assert error["request_id"].startswith("req_")
        assert client_requests(fake) == []

    async def test_unreachable_ollama_is_a_502_in_each_routes_shape(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """With nothing listening upstream the client gets a 502 it can parse: OpenAI's or
        Anthropic's error object, naming the upstream."""
        port = free_port()
        proxy = await start_proxy(f"http://127.0.0.1:{port}", STATIC, memory_source=NoGpuSource("test host"))
        proxy.app[UPSTREAM].retry_window_s = 0.3
        openai_reply = await post(http, proxy.url + "/v1/chat/completions", {"model": "m", "messages": HI})
        claude_reply = await post(
            http, proxy.url + "/v1/messages", {"model": "m", "max_tokens": 2, "messages": HI}
        )
        assert openai_reply.status == claude_reply.status == 502
        message = f"upstream Ollama at http://127.0.0.1:{port} is unreachable: Connect call failed ('127.0.0.1', {port})"
        assert json.loads(openai_reply.body)["error"] == {
            "message": message,
            "type": "api_error",
            "param": None,
            "code": None,
        }
        assert json.loads(claude_reply.body)["error"] == {"type": "api_error", "message": message}


async def refuse(ctx: Any, decision: Any) -> Any:
    """A policy that refuses everything (loaded by the refusal test)."""
    return decision.reject("not today")


class TestLeftToOllama:
    async def test_other_methods_and_paths_pass_through(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """Only POST on the five routes is translated: a GET there reaches Ollama as it is."""
        async with http.get(proxy.url + "/v1/chat/completions") as governed:
            answer = (governed.status, await governed.read())
        async with http.get(fake.url + "/v1/chat/completions") as direct:  # type: ignore[attr-defined]
            assert answer == (direct.status, await direct.read())
        assert [(r.method, r.path) for r in client_requests(fake)] == [
            ("GET", "/v1/chat/completions"),
            ("GET", "/v1/chat/completions"),
        ]

    @pytest.mark.parametrize(
        "config",
        [
            "rules = []",
            '[[rules]]\nmodels = ["*"]\nendpoints = ["chat", "generate"]\npolicies = [{ use = "static", num_ctx = 8192 }]',
            '[[rules]]\nmodels = ["llama3.1:*"]\npolicies = [{ use = "static", num_ctx = 8192 }]',
            '[[rules]]\nmodels = ["*"]\npolicies = []',
        ],
        ids=[
            "pass-through",
            "rule for native routes only",
            "rule for another model",
            "rule without policies",
        ],
    )
    async def test_a_route_no_rule_governs_is_forwarded_as_sent(
        self, config: str, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """When no rule with policies governs the model on the route, the client's own bytes
        go to the client's own path and Ollama answers itself (nothing is translated)."""
        proxy = await start_proxy(fake.url, config, memory_source=NoGpuSource("test host"))  # type: ignore[attr-defined]
        body = b'{"model": "gemma3-270m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}'
        reply = await post(http, proxy.url + "/v1/chat/completions", body)
        assert reply.status == 200 and json.loads(reply.body)["object"] == "chat.completion"
        [reached] = client_requests(fake)
        assert (reached.path, reached.body) == ("/v1/chat/completions", body)

    @pytest.mark.parametrize(
        ("path", "body", "headers"),
        [
            ("/v1/messages", b'{"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}', {}),
            (
                "/v1/responses",
                b'{"model": "gemma3-270m", "input": "hi", "tools": [{"type": "web_search"}]}',
                {},
            ),
        ],
        ids=["no model", "Ollama's own web search"],
    )
    async def test_what_cannot_be_translated_is_forwarded_as_sent(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        fake: FakeOllama,
        proxy: Running,
        http: aiohttp.ClientSession,
    ) -> None:
        """A body without a model and a request only Ollama can serve (its web search) reach
        Ollama byte for byte on their own path."""
        governed = await post(http, proxy.url + path, body, **headers)
        direct = await post(http, fake.url + path, body, **headers)  # type: ignore[attr-defined]
        assert (governed.status, without_ids(governed.body)) == (direct.status, without_ids(direct.body))
        assert [(r.path, r.body) for r in client_requests(fake)] == [(path, body), (path, body)]


def thinking(model: FakeModel) -> FakeModel:
    """``model`` with the thinking capability."""
    return dataclasses.replace(model, capabilities=[*model.capabilities, "thinking"])


THINK = {
    "model": "gemma3-270m",
    "max_tokens": 4,
    "thinking": {"type": "enabled", "budget_tokens": 100},
    "messages": HI,
}


class TestThinkingOnMessages:
    async def test_think_is_dropped_for_a_model_that_cannot_think(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """The model's facts say it cannot think: the native request goes without ``think``,
        as Ollama's Anthropic middleware relaxes it, and the client gets its answer."""
        reply = await post(http, proxy.url + "/v1/messages", THINK)
        assert reply.status == 200 and json.loads(reply.body)["stop_reason"] == "max_tokens"
        [(path, body)] = [(r.path, r.json()) for r in client_requests(fake)]
        assert path == "/api/chat" and "think" not in body and body["options"]["num_ctx"] == 8192

    async def test_without_facts_the_refusal_is_resent_without_think(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Facts not known yet: ``think`` goes out, Ollama refuses it, and the same governed
        request is sent again without it; the client sees only the answer."""
        proxy = await start_proxy(
            fake.url,  # type: ignore[attr-defined]
            STATIC.replace('ps_interval = "10s"', 'ps_interval = "10s"\n    facts_wait = "0s"'),
            memory_source=NoGpuSource("test host"),
        )
        reply = await post(http, proxy.url + "/v1/messages", THINK)
        assert reply.status == 200 and json.loads(reply.body)["type"] == "message"
        bodies = [r.json() for r in client_requests(fake)]
        assert [b.get("think") for b in bodies] == [True, None]
        assert [(b["options"]["num_ctx"], b["keep_alive"]) for b in bodies] == [(8192, "10m")] * 2

    async def test_a_model_that_can_think_keeps_it(
        self, start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A thinking model gets ``think`` as the client asked; nothing is resent."""
        fake = await start_fake(models=[thinking(gemma3_270m())])
        proxy = await start_proxy(fake.url, STATIC, memory_source=NoGpuSource("test host"))  # type: ignore[attr-defined]
        reply = await post(http, proxy.url + "/v1/messages", THINK)
        assert reply.status == 200
        assert [r.json().get("think") for r in client_requests(fake)] == [True]

    async def test_other_routes_pass_the_refusal_on(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """Only /v1/messages relaxes thinking; an OpenAI-style reasoning request for a model
        that cannot think gets Ollama's 400, as it would directly."""
        body = {"model": "gemma3-270m", "reasoning_effort": "high", "messages": HI}
        governed = await post(http, proxy.url + "/v1/chat/completions", body)
        direct = await post(http, fake.url + "/v1/chat/completions", body)  # type: ignore[attr-defined]
        assert governed.status == 400 and json.loads(governed.body)["error"]["message"] == (
            '"gemma3-270m" does not support thinking'
        )
        assert direct.status == 400


class TestBrokenStreams:
    async def test_ollama_dying_mid_stream(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Ollama dies after one native line: the client keeps what it got, then what Ollama's
        writer sends for a native error line (an empty chunk) and no [DONE]; the record says
        the stream broke."""

        async def dying_chat(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            line = {
                "model": "m",
                "created_at": "2026-12-01T20:52:11.5Z",
                "message": {"role": "assistant", "content": "a"},
                "done": False,
            }
            await response.write(json.dumps(line).encode() + b"\n")
            await asyncio.sleep(0.05)  # generating...
            assert request.transport is not None
            request.transport.close()  # the process died: no terminating chunk
            return response

        app = web.Application()
        app.router.add_post("/api/chat", dying_chat)
        dying = await start_app(app)
        try:
            proxy = await start_proxy(dying.url, STATIC, memory_source=NoGpuSource("test host"))
            with capture_logs() as logs:
                reply = await post(
                    http, proxy.url + "/v1/chat/completions", {"model": "m", "messages": HI, "stream": True}
                )
                await settled(proxy)
        finally:
            await dying.runner.cleanup()
        chunks = [json.loads(f.removeprefix("data: ")) for f in frames(reply.body)]
        assert [c["choices"][0]["delta"] for c in chunks] == [
            {"role": "assistant", "content": "a"},
            {"content": ""},
        ]
        [result] = [e for e in logs if e["event"] == "result"]
        assert (result["status"], result["completed"]) == (200, False)
        assert result["error"].startswith("upstream closed the stream")

    async def test_client_hanging_up_stops_ollama(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """The client goes away mid-stream: the native request is closed at once, so Ollama
        stops generating, and the request is recorded as 499."""
        fake.hold = asyncio.Event()  # never set: Ollama would go on forever
        response = await http.post(proxy.url + "/v1/messages", json=STREAMED_REQUESTS["/v1/messages"])
        await asyncio.wait_for(response.content.readline(), timeout=5)
        with capture_logs() as logs:
            response.close()
            await eventually(lambda: fake.cancelled == ["/api/chat"])
            await eventually(lambda: any(e["event"] == "result" for e in logs))
        [result] = [e for e in logs if e["event"] == "result"]
        assert (result["endpoint"], result["status"], result["error"]) == (
            "anthropic.messages",
            499,
            "client disconnected",
        )
