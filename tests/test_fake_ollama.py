"""Quick checks that the fake Ollama speaks the recorded wire format and models memory as documented.

Why: every proxy test trusts this fake; if it drifted from the transcripts, the proxy tests would
prove nothing about real Ollama.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.fake_ollama import (
    FakeOllama,
    gemma3_4b,
    gemma3_27b,
    gemma3_270m,
    llama3_1_8b,
    nomic_embed_text,
    parse_go_duration,
)

V032 = "0.32.15"
"""The version these tests describe: the top-level transcripts and the 0.32 fake (0.33 has its own tests)."""

GiB = 1 << 30
MakeClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(app: web.Application) -> TestClient[web.Request, web.Application]:
        client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
        return client

    return make


async def ndjson(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (await resp.text()).splitlines() if line]


async def test_root_version_and_unknown_paths(make_client: MakeClient) -> None:
    client = await make_client(FakeOllama(version=V032).app)
    r = await client.get("/")
    assert (r.status, r.headers["Content-Type"], await r.text()) == (
        200,
        "text/plain; charset=utf-8",
        "Ollama is running",
    )
    r = await client.head("/")
    assert r.status == 200 and r.headers["Content-Length"] == "17"
    r = await client.get("/api/version")
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await r.read() == b'{"version":"0.32.15"}'
    for method, path in (("GET", "/api/nonexistent"), ("POST", "/"), ("GET", "/api/generate")):
        r = await client.request(method, path)
        assert (r.status, r.headers["Content-Type"], await r.text()) == (
            404,
            "text/plain",
            "404 page not found",
        )


async def test_generate_stream_matches_transcript_shape(make_client: MakeClient) -> None:
    fake = FakeOllama(version=V032, reply_tokens=3)
    client = await make_client(fake.app)
    r = await client.post(
        "/api/generate",
        json={"model": "gemma3-270m", "prompt": "Why is the sky blue?"},
        headers={"X-Test": "1"},
    )
    assert r.headers["Content-Type"] == "application/x-ndjson"
    lines = await ndjson(r)
    assert [list(x) for x in lines[:3]] == [["model", "created_at", "response", "done"]] * 3
    assert "".join(x["response"] for x in lines) == "tok0 tok1 tok2 "
    final = lines[-1]
    assert list(final) == [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ]
    assert final["model"] == "gemma3-270m" and final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 5 and final["eval_count"] == 3  # ceil(20 chars / 4)
    assert fake.loads == [("gemma3-270m:latest", 4096)]
    assert fake.requests[0].headers["x-test"] == "1"
    assert fake.bodies("/api/generate") == [{"model": "gemma3-270m", "prompt": "Why is the sky blue?"}]
    ps = await (await client.get("/api/ps")).json()
    (entry,) = ps["models"]
    assert list(entry) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    assert entry["name"] == "gemma3-270m:latest" and entry["context_length"] == 4096
    assert entry["size"] == fake.size_for(gemma3_270m(), 4096) and entry["size_vram"] == 0


async def test_chat_nonstream_and_num_predict(make_client: MakeClient) -> None:
    client = await make_client(FakeOllama(version=V032).app)
    r = await client.post(
        "/api/chat",
        json={
            "model": "gemma3-270m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": {"num_predict": 2},
        },
    )
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "Content-Length" in r.headers
    body = await r.json()
    assert body["message"] == {"role": "assistant", "content": "tok0 tok1 "}
    assert body["done_reason"] == "length" and "context" not in body


async def test_num_ctx_changes_reload_including_omission(make_client: MakeClient) -> None:
    fake = FakeOllama(version=V032)
    client = await make_client(fake.app)

    async def gen(**options: Any) -> None:
        body = {"model": "gemma3-270m", "prompt": "hi", "stream": False, "options": options}
        assert (await client.post("/api/generate", json=body)).status == 200

    await gen(num_ctx=2048)
    await gen(num_ctx=2048)
    await gen()
    await gen(num_ctx=99999)  # clamped to the trained 32768
    assert fake.loads == [
        ("gemma3-270m:latest", 2048),
        ("gemma3-270m:latest", 4096),
        ("gemma3-270m:latest", 32768),
    ]


async def test_errors_like_ollama(make_client: MakeClient) -> None:
    fake = FakeOllama(version=V032)
    client = await make_client(fake.app)
    cases: list[tuple[str, Any, int, str]] = [
        ("/api/generate", {"model": "no-such-model", "prompt": "hi"}, 404, "model 'no-such-model' not found"),
        ("/api/generate", {"prompt": "hi"}, 404, "model '' not found"),
        ("/api/generate", '{"model":"gemma3-270m","prompt":', 400, "unexpected EOF"),
        (
            "/api/generate",
            {"model": "gemma3-270m", "prompt": "hi", "options": {"num_ctx": "8192"}},
            500,
            'option "num_ctx" must be of type integer',
        ),
        (
            "/api/generate",
            {"model": "gemma3-270m", "prompt": "hi", "keep_alive": "300"},
            400,
            'time: missing unit in duration "300"',
        ),
        ("/api/show", {"model": "no-such-model"}, 404, "model 'no-such-model:latest' not found"),
        (
            "/api/embed",
            {"model": "gemma3-270m", "input": "hi"},
            501,
            "This server does not support embeddings. Start it with `--embeddings`",
        ),
        (
            "/api/generate",
            {"model": "gemma3-270m", "prompt": "hi", "think": True},
            400,
            '"gemma3-270m" does not support thinking',
        ),
    ]
    for path, body, status, message in cases:
        data = body if isinstance(body, str) else json.dumps(body)
        r = await client.post(path, data=data)
        assert r.status == status, (path, body)
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await r.json() == {"error": message}
    fake.fail_next.append((500, "llama runner process has terminated"))
    r = await client.post("/api/chat", json={"model": "gemma3-270m", "messages": []})
    assert (r.status, await r.json()) == (500, {"error": "llama runner process has terminated"})
    assert fake.loads == []


async def test_keep_alive_preload_unload_and_forever(make_client: MakeClient) -> None:
    fake = FakeOllama(version=V032)
    client = await make_client(fake.app)
    r = await client.post("/api/generate", json={"model": "gemma3-270m"})
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    body = await r.json()
    assert list(body) == ["model", "created_at", "response", "done", "done_reason"]
    assert body["done_reason"] == "load" and "gemma3-270m:latest" in fake.loaded()
    r = await client.post("/api/chat", json={"model": "gemma3-270m", "messages": [], "keep_alive": -1})
    assert (await r.json())["message"] == {"role": "assistant", "content": ""}
    ps = await (await client.get("/api/ps")).json()
    assert ps["models"][0]["expires_at"] > "2300"  # ~292 years ahead
    r = await client.post("/api/generate", json={"model": "gemma3-270m", "keep_alive": 0})
    assert (await r.json())["done_reason"] == "unload"
    assert await (await client.get("/api/ps")).read() == b'{"models":[]}'
    await client.post("/api/generate", json={"model": "gemma3-270m", "prompt": "x", "keep_alive": "0s"})
    assert fake.loaded() == {}
    assert parse_go_duration("1h30m") == 5400 * 10**9 and parse_go_duration("-1m") < 0


def test_kv_math_matches_facts() -> None:
    fake = FakeOllama(version=V032)
    gib = 1 << 30
    # gemma3:27b at 131072: 10 GiB global + 52 SWA layers x pad256(1024+512) cells x 8 KiB
    assert fake.kv_bytes(gemma3_27b(), 131072) == 10 * gib + 52 * 1536 * 8192
    assert (
        FakeOllama(version=V032, num_parallel=3).kv_bytes(gemma3_27b(), 131072)
        == 30 * gib + 3 * 52 * 1536 * 8192
    )
    assert fake.kv_bytes(llama3_1_8b(), 8192) == 1024 << 20
    assert FakeOllama(version=V032, kv_cache_type="q8_0").kv_bytes(llama3_1_8b(), 8192) == 544 << 20
    assert fake.kv_bytes(gemma3_4b(), 8192) == 334 << 20
    m = gemma3_27b()
    assert fake.size_for(m, 8192) - fake.size_for(m, 4096) == (
        fake.kv_bytes(m, 8192) - fake.kv_bytes(m, 4096) + m.compute_bytes_per_ctx * 4096
    )


async def test_spill_and_lru_eviction_on_gpu_host(make_client: MakeClient) -> None:
    m27, m4 = gemma3_27b(), gemma3_4b()
    fake = FakeOllama(version=V032, models=[m27, m4], vram_bytes=24 * GiB)
    client = await make_client(fake.app)
    await client.post("/api/generate", json={"model": "gemma3:4b", "options": {"num_ctx": 8192}})
    await client.post("/api/generate", json={"model": "gemma3:27b", "options": {"num_ctx": 8192}})
    assert set(fake.loaded()) == {"gemma3:4b", "gemma3:27b"}  # both fit: multi-model residency
    await client.post("/api/generate", json={"model": "gemma3:27b", "options": {"num_ctx": 131072}})
    assert set(fake.loaded()) == {"gemma3:27b"}  # the 4b was evicted, and the 27b still spills
    state = fake.loaded()["gemma3:27b"]
    assert state.size == fake.size_for(m27, 131072) and state.size_vram == 24 * GiB
    assert state.spilled and fake.free_vram_bytes() == 0


async def test_show_hides_arrays_unless_verbose(make_client: MakeClient) -> None:
    client = await make_client(FakeOllama(version=V032).app)
    body = await (await client.post("/api/show", json={"model": "gemma3-270m"})).json()
    assert list(body) == [
        "modelfile",
        "parameters",
        "template",
        "details",
        "model_info",
        "capabilities",
        "modified_at",
    ]
    info = body["model_info"]
    assert info["gemma3.block_count"] == 18 and info["gemma3.attention.sliding_window"] == 512
    assert info["tokenizer.ggml.tokens"] is None and info["general.tags"] is None
    verbose = await (await client.post("/api/show", json={"model": "gemma3-270m", "verbose": True})).json()
    assert verbose["model_info"]["general.tags"][0] == "gemma3"


async def test_create_copy_delete_pull_and_tags_shapes(make_client: MakeClient) -> None:
    fake = FakeOllama(version=V032, models=[gemma3_270m(), nomic_embed_text()])
    client = await make_client(fake.app)
    r = await client.post(
        "/api/create", json={"model": "g8k", "from": "gemma3-270m", "parameters": {"num_ctx": 8192}}
    )
    assert (await ndjson(r))[-1] == {"status": "success"}
    show = await (await client.post("/api/show", json={"model": "g8k"})).json()
    assert "num_ctx                        8192" in show["parameters"]
    await client.post("/api/generate", json={"model": "g8k", "prompt": "hi", "stream": False})
    assert fake.loads[-1] == ("g8k:latest", 8192)
    r = await client.post("/api/copy", json={"source": "g8k", "destination": "g8k-copy"})
    assert (r.status, await r.read()) == (200, b"")
    assert (await client.delete("/api/delete", json={"model": "g8k"})).status == 200
    assert (await client.delete("/api/delete", json={"model": "g8k"})).status == 404
    r = await client.post("/api/pull", json={"model": "gemma3-270m"})
    assert [x["status"] for x in await ndjson(r)][::4] == ["pulling manifest", "success"]
    tags = await (await client.get("/api/tags")).json()
    names = [m["name"] for m in tags["models"]]
    assert "g8k-copy:latest" in names and "g8k:latest" not in names
    entry = next(m for m in tags["models"] if m["name"] == "nomic-embed-text:latest")
    assert entry["details"]["context_length"] == 2048 and entry["capabilities"] == ["embedding"]
    old = await (await make_client(FakeOllama(version="0.24.0").app)).get("/api/tags")
    assert list((await old.json())["models"][0]) == [
        "name",
        "model",
        "modified_at",
        "size",
        "digest",
        "details",
    ]
    r = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": ["a", "b"]})
    body = await r.json()
    assert len(body["embeddings"]) == 2 and len(body["embeddings"][0]) == 768
    assert fake.loads[-1] == ("nomic-embed-text:latest", 2048)  # Modelfile 8192 clamped


async def test_blob_upload_is_streamed_and_verified(make_client: MakeClient) -> None:
    fake = FakeOllama(version=V032)
    client = await make_client(fake.app)
    data = b"x" * (3 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def chunks() -> Any:
        for i in range(0, len(data), 1 << 20):
            yield data[i : i + (1 << 20)]

    assert (await client.head(f"/api/blobs/{digest}")).status == 404
    assert (await client.post(f"/api/blobs/{digest}", data=chunks())).status == 201
    assert fake.blob_bytes_received[digest] == len(data) and fake.requests[-1].body == b""
    assert (await client.head(f"/api/blobs/{digest}")).status == 200
    bad = "sha256:" + "0" * 64
    r = await client.post(f"/api/blobs/{bad}", data=b"abc")
    assert (r.status, await r.json()) == (400, {"error": "digest mismatch"})


async def test_openai_routes(make_client: MakeClient) -> None:
    fake = FakeOllama(version=V032, reply_tokens=2)
    client = await make_client(fake.app)
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "gemma3-270m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.headers["Content-Type"] == "text/event-stream"
    events = [e for e in (await r.text()).split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    first, usage = json.loads(events[0][6:]), json.loads(events[-2][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "tok0 "}
    assert usage["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    r = await client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert r.status == 404 and r.headers["Content-Type"] == "application/json"
    assert (await r.json())["error"]["type"] == "not_found_error"
    models = await (await client.get("/v1/models")).json()
    assert models["data"][0]["id"] == "gemma3-270m:latest"


@pytest.mark.parametrize("cancel_handlers", [True, False])
async def test_client_disconnect_is_recorded(cancel_handlers: bool) -> None:
    fake = FakeOllama(version=V032)
    fake.hold = asyncio.Event()
    server = TestServer(fake.app)
    if not cancel_handlers:  # like web.run_app: handlers are not cancelled on disconnect
        server = TestServer(fake.app, handler_cancellation=False)
    async with server, aiohttp.ClientSession() as session:
        resp = await session.post(
            server.make_url("/api/chat"),
            json={"model": "gemma3-270m", "messages": [{"role": "user", "content": "hi"}]},
        )
        first = await resp.content.readline()
        assert json.loads(first)["message"]["content"] == "tok0 "
        resp.close()
        for _ in range(200):
            if fake.cancelled:
                break
            await asyncio.sleep(0.01)
        assert fake.cancelled == ["/api/chat"]
        assert fake.loaded()["gemma3-270m:latest"].refcount == 0


async def test_spilled_model_streams_slower(make_client: MakeClient) -> None:
    fake = FakeOllama(
        version=V032, vram_bytes=100 << 20, token_delay_s=0.002, spill_slowdown=10.0, reply_tokens=4
    )
    client = await make_client(fake.app)
    body = await (
        await client.post("/api/generate", json={"model": "gemma3-270m", "prompt": "hi", "stream": False})
    ).json()
    assert fake.loaded()["gemma3-270m:latest"].spilled
    assert body["eval_duration"] >= 4 * 0.02 * 1e9 * 0.9
