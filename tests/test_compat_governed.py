"""The /v1 routes governed end to end: the official SDKs through the governor in front of the fake.

Why: every OpenAI- or Anthropic-style client (SDKs, agents, IDE plugins) gets Ollama's default
context on these routes. Through the governor each request must reach Ollama as the native call
with ``options.num_ctx`` and ``keep_alive`` as decided, and the client must get what Ollama's own
compatibility layer would have sent: the same bodies, event streams, headers and errors.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from structlog.testing import capture_logs

from proxy.facts.memory import NoGpuSource
from tests.conftest import Running, StartFake, StartProxy, client_requests, settled
from tests.fake_ollama import FakeOllama, gemma3_4b, gemma3_270m, llama3_1_8b, nomic_embed_text

STATIC = """
    [ollama]
    ps_interval = "10s"

    [[rules]]
    models = ["*"]
    policies = [{ use = "static", num_ctx = 8192, keep_alive = "10m" }]
"""
"""Every model on every route gets num_ctx 8192 and keep_alive 10m: easy to see on the wire."""
PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000000000500010d0a2db40000000049454e44ae426082"
    )
).decode()
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
    },
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def fake(start_fake: StartFake) -> FakeOllama:
    """A 0.33 fake with a tools model, a vision model, an embedding model and the recordings' model."""
    return await start_fake(
        reply_tokens=6, models=[gemma3_270m(), llama3_1_8b(), gemma3_4b(), nomic_embed_text()]
    )


@pytest.fixture
async def proxy(fake: FakeOllama, start_proxy: StartProxy) -> Running:
    """The governor with the static rule in front of ``fake``, no memory source."""
    return await start_proxy(fake.url, STATIC, memory_source=NoGpuSource("test host"))  # type: ignore[attr-defined]


@pytest.fixture
async def oa(proxy: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official async OpenAI client, pointed at the governor."""
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="ollama", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def claude(proxy: Running) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The official async Anthropic client, pointed at the governor."""
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="ollama", max_retries=0)
    yield client
    await client.close()


def sent(fake: FakeOllama) -> list[tuple[str, Any]]:
    """(path, body) of every request that reached the fake from a client, in order."""
    return [(r.path, r.json()) for r in client_requests(fake)]


def only_native(fake: FakeOllama, path: str) -> dict[str, Any]:
    """The one request that reached the fake, which must be ``path`` with the governed values."""
    [(reached, body)] = sent(fake)
    assert reached == path
    assert (body["options"]["num_ctx"], body["keep_alive"]) == (8192, "10m")
    return dict(body)


class TestOpenAIChat:
    async def test_whole_answer(self, fake: FakeOllama, oa: openai.AsyncOpenAI) -> None:
        """A chat completion reaches Ollama as /api/chat with the decided num_ctx and keep_alive;
        the SDK reads the content, finish reason and usage."""
        reply = await oa.chat.completions.create(model="gemma3-270m", max_tokens=3, messages=HI)  # type: ignore[arg-type]
        body = only_native(fake, "/api/chat")
        assert (body["stream"], body["options"]["num_predict"], body["messages"]) == (False, 3, HI)
        assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (
            "tok0 tok1 tok2 ",
            "length",
        )
        assert reply.usage is not None
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
            fake.completions[-1].prompt_tokens,
            3,
        )
        assert reply.id.startswith("chatcmpl-") and reply.system_fingerprint == "fp_ollama"

    async def test_stream_with_usage(self, fake: FakeOllama, oa: openai.AsyncOpenAI) -> None:
        """A stream is native NDJSON turned into chunks: role first, content, finish, usage last."""
        stream = await oa.chat.completions.create(
            model="gemma3-270m",
            stream=True,
            stream_options={"include_usage": True},
            messages=HI,  # type: ignore[arg-type]
        )
        chunks = [chunk async for chunk in stream]
        assert only_native(fake, "/api/chat")["stream"] is True
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "tok0 tok1 tok2 tok3 tok4 tok5 "
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 6
        assert len({c.id for c in chunks}) == 1

    @pytest.mark.parametrize("stream", [False, True])
    async def test_tools_become_tool_calls(
        self, fake: FakeOllama, oa: openai.AsyncOpenAI, stream: bool
    ) -> None:
        """Tools go to /api/chat as native tools; the native tool call comes back as OpenAI's."""
        calls: list[Any]
        if stream:
            chunks = [
                c
                async for c in await oa.chat.completions.create(
                    model="llama3.1:8b",
                    tools=[TOOL],
                    messages=HI,
                    stream=True,  # type: ignore[list-item,arg-type]
                )
            ]
            calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            reply = await oa.chat.completions.create(model="llama3.1:8b", tools=[TOOL], messages=HI)  # type: ignore[list-item,arg-type]
            calls, finish = list(reply.choices[0].message.tool_calls or []), reply.choices[0].finish_reason
        assert only_native(fake, "/api/chat")["tools"] == [TOOL]
        [call] = calls
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "tok0"})
        assert call.id.startswith("call_") and finish == "tool_calls"

    async def test_an_image_goes_native_and_counts(self, fake: FakeOllama, oa: openai.AsyncOpenAI) -> None:
        """A data: URL image part becomes a native message image; the vision model counts 768 tokens."""
        parts = [
            {"type": "text", "text": "what is it"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
        ]
        reply = await oa.chat.completions.create(
            model="gemma3:4b", messages=[{"role": "user", "content": parts}]
        )  # type: ignore[misc,list-item]
        body = only_native(fake, "/api/chat")
        assert [m.get("images") for m in body["messages"]] == [None, [PNG_1PX]]
        assert reply.usage is not None and reply.usage.prompt_tokens == 3 + 768 + 1

    async def test_a_compressed_body_is_governed(self, fake: FakeOllama, proxy: Running) -> None:
        """A gzip-encoded request body is read decoded and goes to Ollama as the governor's own
        native JSON, without the client's Content-Encoding."""
        body = gzip.compress(json.dumps({"model": "gemma3-270m", "max_tokens": 2, "messages": HI}).encode())
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                proxy.url + "/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            ) as response,
        ):
            reply = await response.json()
        assert reply["choices"][0]["message"]["content"] == "tok0 tok1 "
        only_native(fake, "/api/chat")
        assert "Content-Encoding" not in client_requests(fake)[0].headers


class TestOtherOpenAIRoutes:
    async def test_completions(self, fake: FakeOllama, oa: openai.AsyncOpenAI) -> None:
        """/v1/completions goes to /api/generate; the SDK reads text and finish reason."""
        done = await oa.completions.create(model="gemma3-270m", prompt="hi", max_tokens=2)
        body = only_native(fake, "/api/generate")
        assert (body["prompt"], body["options"]["num_predict"]) == ("hi", 2)
        assert (done.choices[0].text, done.choices[0].finish_reason) == ("tok0 tok1 ", "length")
        assert done.usage is not None and done.usage.completion_tokens == 2

    async def test_completions_stream(self, fake: FakeOllama, oa: openai.AsyncOpenAI) -> None:
        """A completions stream: one chunk per native line, the last with the finish reason."""
        chunks = [c async for c in await oa.completions.create(model="gemma3-270m", prompt="hi", stream=True)]
        assert only_native(fake, "/api/generate")["stream"] is True
        assert "".join(c.choices[0].text for c in chunks) == "tok0 tok1 tok2 tok3 tok4 tok5 "
        assert chunks[-1].choices[0].finish_reason == "stop"

    async def test_embeddings(self, fake: FakeOllama, oa: openai.AsyncOpenAI) -> None:
        """/v1/embeddings goes to /api/embed; vectors in order, prompt tokens as usage."""
        emb = await oa.embeddings.create(model="nomic-embed-text", input=["a", "bb"])
        body = only_native(fake, "/api/embed")
        assert body["input"] == ["a", "bb"]
        assert [d.index for d in emb.data] == [0, 1] and len(emb.data[0].embedding) == 768
        assert emb.model == "nomic-embed-text" and emb.usage.prompt_tokens == 2

    async def test_responses(self, fake: FakeOllama, oa: openai.AsyncOpenAI) -> None:
        """/v1/responses goes to /api/chat; the SDK reads output_text and usage."""
        reply = await oa.responses.create(
            model="gemma3-270m", input="hi", instructions="be brief", max_output_tokens=2
        )
        body = only_native(fake, "/api/chat")
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert (
            reply.output_text == "tok0 tok1 " and reply.usage is not None and reply.usage.output_tokens == 2
        )

    async def test_responses_stream(self, fake: FakeOllama, oa: openai.AsyncOpenAI) -> None:
        """A Responses stream ends in response.completed holding the whole text."""
        events = [e async for e in await oa.responses.create(model="gemma3-270m", input="hi", stream=True)]
        assert only_native(fake, "/api/chat")["stream"] is True
        assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
        assert events[-1].type == "response.completed"
        assert events[-1].response.output_text == "tok0 tok1 tok2 tok3 tok4 tok5 "  # type: ignore[union-attr]
        assert [e.sequence_number for e in events] == list(range(len(events)))


class TestAnthropicMessages:
    async def test_whole_answer(self, fake: FakeOllama, claude: anthropic.AsyncAnthropic) -> None:
        """/v1/messages goes to /api/chat with max_tokens as num_predict; the SDK reads text,
        stop reason and usage."""
        reply = await claude.messages.create(
            model="gemma3-270m", max_tokens=2, system="be brief", messages=HI
        )  # type: ignore[arg-type]
        body = only_native(fake, "/api/chat")
        assert body["options"]["num_predict"] == 2 and body["messages"][0] == {
            "role": "system",
            "content": "be brief",
        }
        assert (reply.content[0].text, reply.stop_reason) == ("tok0 tok1 ", "max_tokens")  # type: ignore[union-attr]
        assert (reply.usage.input_tokens, reply.usage.output_tokens) == (
            fake.completions[-1].prompt_tokens,
            2,
        )
        assert reply.id.startswith("msg_")

    async def test_stream(self, fake: FakeOllama, claude: anthropic.AsyncAnthropic) -> None:
        """The event stream the SDK assembles: text deltas, then the final message with usage."""
        async with claude.messages.stream(model="gemma3-270m", max_tokens=3, messages=HI) as stream:  # type: ignore[arg-type]
            texts = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
        assert only_native(fake, "/api/chat")["stream"] is True
        assert "".join(texts) == "tok0 tok1 tok2 " and final.stop_reason == "max_tokens"
        assert final.usage.output_tokens == 3

    async def test_tool_use(self, fake: FakeOllama, claude: anthropic.AsyncAnthropic) -> None:
        """An Anthropic tool is a native tool; the native call comes back as a tool_use block."""
        tool = {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": TOOL["function"]["parameters"],
        }  # type: ignore[index]
        reply = await claude.messages.create(model="llama3.1:8b", max_tokens=8, tools=[tool], messages=HI)  # type: ignore[list-item,arg-type]
        assert only_native(fake, "/api/chat")["tools"][0]["function"]["name"] == "get_weather"
        (block,) = reply.content
        assert (reply.stop_reason, block.type, block.input) == ("tool_use", "tool_use", {"city": "tok0"})  # type: ignore[union-attr]


class TestRecorded:
    async def test_each_request_is_one_result_with_the_native_figures(
        self, fake: FakeOllama, proxy: Running, oa: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
    ) -> None:
        """A /v1 request is recorded like a native one, with the load, counts and rates of the
        native final object its client never sees."""
        with capture_logs() as logs:
            chat_reply = await oa.chat.completions.create(model="gemma3-270m", max_tokens=3, messages=HI)  # type: ignore[arg-type]
            async with claude.messages.stream(model="gemma3-270m", max_tokens=2, messages=HI) as stream:  # type: ignore[arg-type]
                messages_reply = await stream.get_final_message()
            embed_reply = await oa.embeddings.create(model="nomic-embed-text", input="a")
            await settled(proxy)
        results = [e for e in logs if e["event"] == "result"]
        assert [(r["endpoint"], r["stream"], r["status"], r["completed"]) for r in results] == [
            ("openai.chat", False, 200, True),
            ("anthropic.messages", True, 200, True),
            ("openai.embeddings", False, 200, True),
        ]
        chat, messages, embed = results
        assert (chat["applied_num_ctx"], chat["applied_keep_alive"]) == (8192, "10m")
        assert chat_reply.usage is not None and chat_reply.choices[0].finish_reason == chat["done_reason"]
        assert (chat["prompt_tokens"], chat["eval_tokens"]) == (
            chat_reply.usage.prompt_tokens,
            chat_reply.usage.completion_tokens,
        )
        assert chat["load_ms"] > 0 and chat["eval_tokens_per_s"] > 0 and chat["prompt_tokens_per_s"] > 0
        assert (messages["prompt_tokens"], messages["eval_tokens"]) == (
            messages_reply.usage.input_tokens,
            messages_reply.usage.output_tokens,
        )
        assert messages["done_reason"] == "length" and messages_reply.stop_reason == "max_tokens"
        assert embed["prompt_tokens"] == embed_reply.usage.prompt_tokens and embed["load_ms"] > 0


class TestNoDerivedModels:
    async def test_listings_are_the_same_through_the_governor(
        self, fake: FakeOllama, proxy: Running, oa: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
    ) -> None:
        """After governed /v1 requests no model name appears or disappears: /api/tags, /v1/models
        and /v1/models/{name} answer through the governor exactly as Ollama does (translation,
        not derived models)."""
        await oa.chat.completions.create(model="gemma3-270m", messages=HI)  # type: ignore[arg-type]
        await claude.messages.create(model="llama3.1:8b", max_tokens=2, messages=HI)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as http:
            for path in ("/api/tags", "/v1/models", "/v1/models/gemma3-270m"):
                answers = []
                for base in (fake.url, proxy.url):  # type: ignore[attr-defined]
                    async with http.get(base + path) as response:
                        answers.append((response.status, await response.read()))
                assert answers[0] == answers[1], path
        assert {m.id async for m in oa.models.list()} == set(fake.models)


class TestDryRun:
    async def test_a_dry_run_translates_but_sets_nothing(
        self, fake: FakeOllama, start_proxy: StartProxy
    ) -> None:
        """With ``dry_run`` the request still goes native (so it is recorded) but without the
        decided num_ctx and keep_alive, which the record shows."""
        proxy = await start_proxy(
            fake.url, "dry_run = true\n" + STATIC, memory_source=NoGpuSource("test host")
        )  # type: ignore[attr-defined]
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="ollama", max_retries=0)
        with capture_logs() as logs:
            await client.chat.completions.create(model="gemma3-270m", messages=HI)  # type: ignore[arg-type]
            await settled(proxy)
        await client.close()
        [(path, body)] = sent(fake)
        assert path == "/api/chat" and "num_ctx" not in body["options"] and "keep_alive" not in body
        [result] = [e for e in logs if e["event"] == "result"]
        assert (result["dry_run"], result["applied_num_ctx"], result["endpoint"]) == (
            True,
            8192,
            "openai.chat",
        )
