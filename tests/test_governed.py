"""Governed endpoints end to end: the official ollama client, through the proxy, to the fake."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
from structlog.testing import capture_logs

from proxy.keys import UPSTREAM
from tests.conftest import (
    OllamaClients,
    Running,
    StartFake,
    StartProxy,
    client_requests,
    free_port,
    settled,
)
from tests.fake_ollama import FakeOllama

STATIC_8192 = """
[[rules]]
models = ["gemma3-270m*"]
policies = [{ use = "static", num_ctx = 8192, keep_alive = "30m" }]

[[rules]]
models = ["*"]
policies = []
"""
SECRET = "the launch code is 0000"


@pytest.fixture
async def governed(fake: FakeOllama, start_proxy: StartProxy) -> Running:
    return await start_proxy(fake.url, STATIC_8192)  # type: ignore[attr-defined]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


class TestOfficialClient:
    async def test_async_chat_streaming(
        self, ollama_client: OllamaClients, fake: FakeOllama, governed: Running
    ) -> None:
        """AsyncClient.chat(stream=True) yields the fake's tokens; num_ctx was rewritten upstream."""
        client = ollama_client(governed.url)
        parts = [
            part
            async for part in await client.chat(
                model="gemma3-270m", messages=[{"role": "user", "content": SECRET}], stream=True
            )
        ]
        assert parts[-1].done and parts[-1].eval_count == len(parts) - 1
        [body] = fake.bodies("/api/chat")
        assert body["options"]["num_ctx"] == 8192 and body["keep_alive"] == "30m"
        assert body["messages"] == [{"role": "user", "content": SECRET}]

    async def test_async_generate_not_streamed(
        self, ollama_client: OllamaClients, fake: FakeOllama, governed: Running
    ) -> None:
        """AsyncClient.generate() without streaming gets Ollama's single object."""
        result = await ollama_client(governed.url).generate(
            model="gemma3-270m", prompt="hi", options={"num_ctx": 2048}
        )
        assert result.done and result.response
        assert fake.bodies("/api/generate")[0]["options"] == {"num_ctx": 8192}

    async def test_sync_client_in_a_thread(self, fake: FakeOllama, governed: Running) -> None:
        """The blocking Client works too, streaming and not (run off the loop the proxy uses)."""

        def use_sync_client() -> tuple[str, int]:
            with ollama.Client(host=governed.url) as client:
                reply = client.chat(model="gemma3-270m", messages=[{"role": "user", "content": "hi"}])
                streamed = list(client.generate(model="gemma3-270m", prompt="hi", stream=True))
            return reply.message.content or "", len(streamed)

        content, chunks = await asyncio.to_thread(use_sync_client)
        assert content and chunks > 1
        assert [b["options"]["num_ctx"] for b in fake.bodies("/api/chat") + fake.bodies("/api/generate")] == [
            8192,
            8192,
        ]

    async def test_errors_reach_the_client_as_ollama_errors(
        self, ollama_client: OllamaClients, governed: Running
    ) -> None:
        """Ollama's 404 for an unknown model surfaces as ollama.ResponseError with its text."""
        with pytest.raises(ollama.ResponseError) as info:
            await ollama_client(governed.url).chat(model="no-such-model", messages=[])
        assert info.value.status_code == 404
        assert info.value.error == "model 'no-such-model' not found"

    async def test_other_endpoints_through_the_client(
        self, ollama_client: OllamaClients, governed: Running
    ) -> None:
        """list, ps, show and version work through the proxy with the official client."""
        client = ollama_client(governed.url)
        assert [m.model for m in (await client.list()).models] == ["gemma3-270m:latest"]
        assert (await client.show("gemma3-270m")).details.family == "gemma3"  # type: ignore[union-attr]
        await client.generate(model="gemma3-270m", prompt="hi")
        assert [m.context_length for m in (await client.ps()).models] == [8192]


class TestRewriting:
    async def test_unmatched_model_is_forwarded_byte_for_byte(
        self, start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A model no rule governs goes upstream with the client's exact bytes."""
        from tests.fake_ollama import gemma3_4b

        fake = await start_fake(models=[gemma3_4b()])
        proxy = await start_proxy(fake.url, STATIC_8192)
        raw = b'{ "model" : "gemma3:4b", "prompt": "hi",  "stream": false, "options": {"num_ctx": 1024} }'
        async with http.post(proxy.url + "/api/generate", data=raw) as response:
            assert response.status == 200
        assert client_requests(fake)[-1].body == raw

    async def test_invalid_json_gets_ollamas_own_answer(
        self, fake: FakeOllama, governed: Running, http: aiohttp.ClientSession
    ) -> None:
        """A body that is not JSON is forwarded untouched; Ollama's 400 comes back."""
        raw = b'{"model":"gemma3-270m","prompt":'
        async with http.post(fake.url + "/api/generate", data=raw) as response:  # type: ignore[attr-defined]
            direct = (response.status, await response.read())
        async with http.post(governed.url + "/api/generate", data=raw) as response:
            proxied = (response.status, await response.read())
        assert proxied == direct and proxied[0] == 400
        assert client_requests(fake)[-1].body == raw

    async def test_wrong_option_type_gets_ollamas_500(
        self, fake: FakeOllama, governed: Running, http: aiohttp.ClientSession
    ) -> None:
        """num_ctx as a string is Ollama's 500, not something the governor silently fixes."""
        payload = {"model": "gemma3-270m", "prompt": "hi", "options": {"num_ctx": "8192"}}
        async with http.post(governed.url + "/api/generate", json=payload) as response:
            assert response.status == 500
            assert (await response.json())["error"] == 'option "num_ctx" must be of type integer'

    async def test_dry_run_logs_but_forwards_unchanged(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """--dry-run: the decision is logged, the client's body is what Ollama receives."""
        proxy = await start_proxy(fake.url, "dry_run = true\n" + STATIC_8192)  # type: ignore[attr-defined]
        raw = json.dumps({"model": "gemma3-270m", "prompt": "hi", "stream": False}).encode()
        with capture_logs() as logs:
            async with http.post(proxy.url + "/api/generate", data=raw) as response:
                assert response.status == 200
            await settled(proxy)
        assert client_requests(fake)[-1].body == raw
        [result] = events(logs, "result")
        assert result["dry_run"] is True and result["applied_num_ctx"] == 8192


class TestResults:
    async def test_result_event_fields_and_no_prompt(
        self, ollama_client: OllamaClients, fake: FakeOllama, governed: Running
    ) -> None:
        """One result event per request with the figures; the prompt appears in no log."""
        client = ollama_client(governed.url)
        with capture_logs() as logs:
            await client.chat(model="gemma3-270m", messages=[{"role": "user", "content": SECRET}])
            await settled(governed)
            await client.generate(model="gemma3-270m", prompt=SECRET, stream=False)
            await settled(governed)
        chat, generate = events(logs, "result")
        assert chat["endpoint"] == "chat" and generate["endpoint"] == "generate"
        for result in (chat, generate):
            assert result["model"] == "gemma3-270m" and result["status"] == 200
            assert (result["client_num_ctx"], result["applied_num_ctx"]) == (None, 8192)
            assert (result["client_keep_alive"], result["applied_keep_alive"]) == (None, "30m")
            assert [c["policy"] for c in result["changed_by"]] == [
                "static",
            ]
            assert set(result["changed_by"][0]["fields"]) == {"num_ctx", "keep_alive"}
            for key in ("load_ms", "total_ms", "ttfb_ms", "prompt_tokens_per_s", "eval_tokens_per_s"):
                assert isinstance(result[key], float), key
            assert result["eval_tokens"] == 8 and result["prompt_tokens"] >= 1
            assert result["done_reason"] == "stop"
        assert chat["reloaded"] is True or fake.loads  # first request loaded the model
        assert generate["reloaded"] is False
        assert SECRET not in repr(logs)

    async def test_change_events(
        self, ollama_client: OllamaClients, fake: FakeOllama, start_proxy: StartProxy
    ) -> None:
        """A change event is logged when the applied num_ctx for a model differs from last time."""
        proxy = await start_proxy(
            fake.url, '[[rules]]\nmodels = ["*"]\npolicies = [{ use = "static", keep_alive = "1m" }]'
        )  # type: ignore[attr-defined]
        client = ollama_client(proxy.url)
        with capture_logs() as logs:
            for num_ctx in (2048, 2048, 4096):
                await client.generate(model="gemma3-270m", prompt="hi", options={"num_ctx": num_ctx})
                await settled(proxy)
        changes = events(logs, "change")
        assert [(c["model"], c["field"], c["from"], c["to"]) for c in changes] == [
            ("gemma3-270m", "num_ctx", 2048, 4096)
        ]


class TestPolicies:
    async def test_custom_policy_from_file(
        self, ollama_client: OllamaClients, fake: FakeOllama, start_proxy: StartProxy, tmp_path: Path
    ) -> None:
        """A user's policy file is loaded and its decision reaches Ollama."""
        path = tmp_path / "night.py"
        path.write_text(
            textwrap.dedent("""
            from policies import Context, Decision

            class NightShift:
                def __init__(self, max_ctx: int = 65536) -> None:
                    self.max_ctx = max_ctx

                async def __call__(self, ctx: Context, decision: Decision) -> Decision:
                    return decision.replace(num_ctx=self.max_ctx, reason="night shift")
        """)
        )
        config = f'[[rules]]\nmodels = ["*"]\npolicies = [{{ use = "{path}:NightShift", max_ctx = 16384 }}]'
        proxy = await start_proxy(fake.url, config)  # type: ignore[attr-defined]
        await ollama_client(proxy.url).generate(model="gemma3-270m", prompt="hi")
        assert fake.bodies("/api/generate")[0]["options"]["num_ctx"] == 16384

    async def test_failing_policy_fails_open(
        self, ollama_client: OllamaClients, fake: FakeOllama, start_proxy: StartProxy, tmp_path: Path
    ) -> None:
        """A raising policy is logged with its name and skipped; the request still succeeds."""
        path = tmp_path / "broken.py"
        path.write_text("async def broken(ctx, decision):\n    raise RuntimeError('bug in policy')\n")
        config = f"""
            [[rules]]
            models = ["*"]
            policies = [{{ use = "{path}:broken" }}, {{ use = "static", keep_alive = "2m" }}]
        """
        proxy = await start_proxy(fake.url, config)  # type: ignore[attr-defined]
        with capture_logs() as logs:
            reply = await ollama_client(proxy.url).generate(model="gemma3-270m", prompt="hi")
            await settled(proxy)
        assert reply.done
        assert fake.bodies("/api/generate")[0]["keep_alive"] == "2m"
        [error] = events(logs, "policy_error")
        assert error["policy"] == f"{path}:broken" and "bug in policy" in error["error"]
        [result] = events(logs, "result")
        assert result["policy_errors"] == [f"{path}:broken: RuntimeError: bug in policy"]

    async def test_rejection_returns_400_and_sends_nothing(
        self, ollama_client: OllamaClients, fake: FakeOllama, start_proxy: StartProxy, tmp_path: Path
    ) -> None:
        """decision.reject() answers 400 {"error": ...} and Ollama never sees the request."""
        path = tmp_path / "gate.py"
        path.write_text(
            "async def gate(ctx, decision):\n    return decision.reject('closed for maintenance')\n"
        )
        proxy = await start_proxy(
            fake.url, f'[[rules]]\nmodels = ["*"]\npolicies = [{{ use = "{path}:gate" }}]'
        )  # type: ignore[attr-defined]
        with pytest.raises(ollama.ResponseError) as info:
            await ollama_client(proxy.url).chat(
                model="gemma3-270m", messages=[{"role": "user", "content": "x"}]
            )
        assert (info.value.status_code, info.value.error) == (400, "closed for maintenance")
        assert client_requests(fake) == []


class TestUpstreamFailures:
    async def test_unreachable_upstream_is_502_in_ollama_shape(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Nothing listening upstream: 502 with an error naming the upstream."""
        port = free_port()
        proxy = await start_proxy(f"http://127.0.0.1:{port}")
        proxy.app[UPSTREAM].retry_window_s = 0.3
        for path, payload in (("/api/tags", None), ("/api/chat", {"model": "m", "messages": []})):
            async with http.request("POST" if payload else "GET", proxy.url + path, json=payload) as response:
                assert response.status == 502
                error = (await response.json())["error"]
            assert (
                error
                == f"upstream Ollama at http://127.0.0.1:{port} is unreachable: Connect call failed ('127.0.0.1', {port})"
            )

    async def test_restarting_ollama_is_ridden_over(
        self, start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Connection refused before anything was sent is retried until Ollama is back."""
        port = free_port()
        proxy = await start_proxy(f"http://127.0.0.1:{port}")

        async def ollama_comes_back() -> None:
            await asyncio.sleep(0.4)
            await start_fake(port=port)

        comeback = asyncio.create_task(ollama_comes_back())
        payload = {"model": "gemma3-270m", "prompt": "hi", "stream": False}
        async with http.post(proxy.url + "/api/generate", json=payload) as response:
            assert response.status == 200
            assert (await response.json())["done"] is True
        await comeback

    async def test_health(
        self, start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """/governor/health is 200 while Ollama answers and 503 when it does not."""
        fake = await start_fake()
        proxy = await start_proxy(fake.url)
        async with http.get(proxy.url + "/governor/health") as response:
            assert response.status == 200
            assert await response.json() == {
                "status": "ok",
                "upstream": fake.url,
                "ollama_version": "0.33.0-rc2",
            }
        down = await start_proxy(f"http://127.0.0.1:{free_port()}")
        async with http.get(down.url + "/governor/health") as response:
            assert response.status == 503
            assert (await response.json())["status"] == "unavailable"
        async with http.get(down.url + "/governor/nothing-here") as response:
            assert response.status == 404
