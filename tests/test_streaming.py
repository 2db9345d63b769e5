"""Streaming: every NDJSON line reaches the client as soon as Ollama sends it."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.conftest import StartFake, StartProxy, eventually, start_app


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/pull"])
async def test_first_line_arrives_while_ollama_still_holds_the_rest(
    start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession, path: str
) -> None:
    """The fake sends one line and then waits; a buffering proxy would deliver nothing."""
    hold = asyncio.Event()
    fake = await start_fake()
    fake.hold = hold
    proxy = await start_proxy(
        fake.url, '[[rules]]\nmodels = ["*"]\npolicies = [{ use = "static", num_ctx = 2048 }]'
    )
    payload = {"model": "gemma3-270m", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(proxy.url + path, json=payload) as response:
        first = await asyncio.wait_for(response.content.readline(), timeout=5)
        assert json.loads(first)
        assert not hold.is_set()
        hold.set()
        rest = await response.read()
    lines = [json.loads(line) for line in (first + rest).splitlines()]
    assert lines[-1].get("done") is True or lines[-1] == {"status": "success"}


async def test_client_disconnect_cancels_upstream(
    start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """When the client goes away mid-stream the upstream request is closed, so Ollama stops."""
    fake = await start_fake()
    fake.hold = asyncio.Event()  # never set: Ollama would go on generating forever
    proxy = await start_proxy(fake.url)
    payload = {"model": "gemma3-270m", "messages": [{"role": "user", "content": "hi"}]}
    response = await http.post(proxy.url + "/api/chat", json=payload)
    await asyncio.wait_for(response.content.readline(), timeout=5)
    with capture_logs() as logs:
        response.close()  # the client hangs up
        await eventually(lambda: fake.cancelled == ["/api/chat"])
        await eventually(lambda: any(e["event"] == "result" for e in logs))
    [result] = [e for e in logs if e["event"] == "result"]
    assert (result["status"], result["completed"], result["error"]) == (499, False, "client disconnected")


async def test_upstream_dying_mid_stream_ends_with_ollama_error_line(
    start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    """If Ollama dies mid-stream the client gets an error line in Ollama's shape, not silence."""

    async def dying_chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n')
        await asyncio.sleep(0.1)  # generating...
        assert request.transport is not None
        request.transport.close()  # the process died: no terminating chunk
        return response

    app = web.Application()
    app.router.add_post("/api/chat", dying_chat)
    dying = await start_app(app)
    try:
        proxy = await start_proxy(dying.url)
        payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(proxy.url + "/api/chat", json=payload) as response:
            body = await asyncio.wait_for(response.read(), timeout=5)
    finally:
        await dying.runner.cleanup()
    first, last = (json.loads(line) for line in body.splitlines())
    assert first["message"]["content"] == "a"
    assert last["error"].startswith("upstream closed the stream")
