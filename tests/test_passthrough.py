"""Every Ollama endpoint passes through unchanged: status, body bytes, end-to-end headers."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json

import aiohttp
import pytest
from yarl import URL

from tests.conftest import Running, StartProxy, client_requests
from tests.fake_ollama import FakeOllama

COMPARED_HEADERS = ("Content-Type", "Content-Length", "Date")
GOVERNED = """
[[rules]]
models = ["*"]
policies = [{ use = "static", num_ctx = 4096 }]
"""


async def exchange(
    http: aiohttp.ClientSession, base: str, method: str, path: str, **kwargs: object
) -> tuple[int, dict[str, str], bytes]:
    async with http.request(method, base + path, **kwargs) as response:  # type: ignore[arg-type]
        body = await response.read()
        headers = {h: response.headers.get(h, "") for h in COMPARED_HEADERS}
        return response.status, headers, body


CASES = [
    ("GET", "/", None),
    ("HEAD", "/", None),
    ("GET", "/api/version", None),
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("POST", "/api/show", {"model": "gemma3-270m"}),
    ("POST", "/api/show", {"model": "no-such-model"}),
    ("POST", "/api/embed", {"model": "gemma3-270m", "input": "hi"}),
    ("POST", "/api/embeddings", {"model": "gemma3-270m", "prompt": "hi"}),
    ("GET", "/v1/models", None),
    ("GET", "/api/something-ollama-adds-later", None),
    ("DELETE", "/api/delete", {"model": "no-such-model"}),
]


class TestEndpoints:
    @pytest.mark.parametrize(("method", "path", "payload"), CASES)
    async def test_same_answer_as_direct(
        self,
        fake: FakeOllama,
        proxy: Running,
        http: aiohttp.ClientSession,
        method: str,
        path: str,
        payload: object,
    ) -> None:
        """Through the proxy the client sees exactly what Ollama itself answers."""
        kwargs = {"json": payload} if payload is not None else {}
        direct = await exchange(http, fake.url, method, path, **kwargs)  # type: ignore[attr-defined]
        proxied = await exchange(http, proxy.url, method, path, **kwargs)
        assert proxied[0] == direct[0]
        assert proxied[2] == direct[2] or path == "/api/ps"  # expires_at moves with time
        for name in ("Content-Type", "Content-Length"):
            assert proxied[1][name] == direct[1][name], name
        assert proxied[1]["Date"]  # Ollama's own Date header, not dropped

    async def test_model_management_endpoints(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """pull streams its status lines; copy, create and delete reach Ollama and answer as it does."""
        status, _, body = await exchange(http, proxy.url, "POST", "/api/pull", json={"model": "gemma3-270m"})
        lines = [json.loads(line) for line in body.splitlines()]
        assert status == 200 and lines[-1] == {"status": "success"}
        status, _, _ = await exchange(
            http, proxy.url, "POST", "/api/copy", json={"source": "gemma3-270m", "destination": "mine"}
        )
        assert status == 200
        status, _, _ = await exchange(
            http, proxy.url, "POST", "/api/create", json={"model": "x", "from": "mine"}
        )
        assert status == 200
        status, _, _ = await exchange(http, proxy.url, "DELETE", "/api/delete", json={"model": "mine"})
        assert status == 200
        assert [r.path for r in client_requests(fake)] == [
            "/api/pull",
            "/api/copy",
            "/api/create",
            "/api/delete",
        ]

    async def test_openai_streaming_passes_through(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """/v1 server-sent events arrive byte for byte."""
        payload = {"model": "gemma3-270m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with http.post(proxy.url + "/v1/chat/completions", json=payload) as response:
            body = await response.read()
            assert response.headers["Content-Type"] == "text/event-stream"
        assert body.endswith(b"data: [DONE]\n\n")

    async def test_query_string_and_headers(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """Query strings survive byte for byte; hop-by-hop headers (and those Connection names) do not."""
        headers = {
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "drop me",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-End-To-End": "keep me",
            "Authorization": "Bearer client-token",
        }
        async with http.get(
            URL(proxy.url + "/api/tags?x=1&y=%2Fz&y=2", encoded=True), headers=headers
        ) as response:
            assert response.status == 200
        [received] = client_requests(fake)
        assert received.query == "x=1&y=%2Fz&y=2"
        names = {k.lower() for k in received.headers}
        assert {"x-hop", "keep-alive", "te", "proxy-authorization"}.isdisjoint(names)
        assert received.headers["X-End-To-End"] == "keep me"
        assert received.headers["Authorization"] == "Bearer client-token"


class TestCompressedBodies:
    """A gzip body is the client's bytes: relayed as sent, never inflated on the way (Ollama, like
    Go's net/http, does not decompress a request either, so it answers such a body itself)."""

    @pytest.mark.parametrize("path", ["/api/show", "/api/generate"], ids=["pass-through", "governed route"])
    async def test_relayed_byte_for_byte(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession, path: str
    ) -> None:
        proxy = await start_proxy(fake.url, GOVERNED)  # type: ignore[attr-defined]
        body = gzip.compress(json.dumps({"model": "gemma3-270m", "prompt": "hi"}).encode())
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        direct = await exchange(http, fake.url, "POST", path, data=body, headers=headers)  # type: ignore[attr-defined]
        governed = await exchange(http, proxy.url, "POST", path, data=body, headers=headers)
        assert governed[0] == direct[0] == 400
        assert governed[2] == direct[2]
        first, second = client_requests(fake)
        assert first.body == second.body == body
        assert second.headers["Content-Encoding"] == "gzip"


class TestBlobs:
    async def test_upload_and_check(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """HEAD answers 404 before and 200 after a POST that streamed the blob through."""
        data = b"x" * (3 * 1024 * 1024 + 17)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        url = f"{proxy.url}/api/blobs/{digest}"
        async with http.head(url) as response:
            assert response.status == 404
        async with http.post(url, data=io.BytesIO(data)) as response:
            assert response.status == 201
        async with http.head(url) as response:
            assert response.status == 200
        assert fake.blob_bytes_received[digest] == len(data)

    async def test_digest_mismatch_answer_passes_through(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """Ollama's 400 for a wrong digest reaches the client as is."""
        async with http.post(f"{proxy.url}/api/blobs/sha256:{'0' * 64}", data=b"abc") as response:
            assert response.status == 400
            assert "error" in await response.json()

    async def test_large_upload_streams_in_bounded_memory(
        self, fake: FakeOllama, proxy: Running, http: aiohttp.ClientSession
    ) -> None:
        """A 256 MiB upload (chunked, generated on the fly) never sits whole in the proxy's memory."""
        import tracemalloc

        chunk = b"\x5a" * (1024 * 1024)
        total = 256
        digest = hashlib.sha256()
        for _ in range(total):
            digest.update(chunk)
        name = "sha256:" + digest.hexdigest()

        async def generate() -> object:
            for _ in range(total):
                yield chunk
                await asyncio.sleep(0)

        tracemalloc.start()
        try:
            async with http.post(f"{proxy.url}/api/blobs/{name}", data=generate()) as response:
                assert response.status == 201
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert fake.blob_bytes_received[name] == total * len(chunk)
        # Client, proxy and fake share this process: all together stay far below the body size.
        assert peak < 48 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB"
