"""The 0.33 fake's OpenAI and Anthropic routes through the official SDKs and as recorded bytes.

Why: clients behind the governor use these SDKs; the fake must frame /v1 exactly like Ollama
0.33 (tests/data/ollama-0.33/v1_*.txt), or a proxy relaying them could break unseen.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from tests.conftest import StartFake
from tests.fake_ollama import FakeOllama, gemma3_4b, gemma3_270m, llama3_1_8b, nomic_embed_text
from tests.transcripts import exchange, shape

V033 = "0.33.0-rc2"
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


@pytest.fixture
async def fake(start_fake: StartFake) -> FakeOllama:
    """A 0.33 fake with a tools model, a vision model, an embedding model and the transcripts' model."""
    return await start_fake(
        version=V033, reply_tokens=6, models=[gemma3_270m(), llama3_1_8b(), gemma3_4b(), nomic_embed_text()]
    )


@pytest.fixture
async def oa(fake: FakeOllama) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="ollama", max_retries=0)  # type: ignore[attr-defined]
    yield client
    await client.close()


@pytest.fixture
async def claude(fake: FakeOllama) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="ollama", max_retries=0)  # type: ignore[attr-defined]
    yield client
    await client.close()


async def raw(fake: FakeOllama, path: str, body: Any) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.post(fake.url + path, data=json.dumps(body)) as resp:  # type: ignore[attr-defined]
        return resp.status, dict(resp.headers), await resp.text()


def sse_data(body: str) -> list[Any]:
    """The data of each SSE event, checking the blank-line framing on the way."""
    events = body.split("\n\n")
    assert events[-1] == ""
    out: list[Any] = []
    for event in events[:-1]:
        data = [line[6:] for line in event.split("\n") if line.startswith("data: ")]
        out.append(data[0] if data[0] == "[DONE]" else json.loads(data[0]))
    return out


def recorded_sse(name: str) -> list[Any]:
    return sse_data("\n".join(exchange(name).lines) + "\n")  # the recorded lines lost their newlines


class TestChatCompletions:
    async def test_non_streamed_shape_and_framing(self, fake: FakeOllama) -> None:
        """The body has the recorded keys, says application/json and ends with a newline."""
        ex = exchange("v1_chat_completions_nostream.txt")
        status, headers, body = await raw(fake, ex.path, ex.request_json)
        assert (status, headers["Content-Type"], body.endswith("\n")) == (
            200,
            ex.headers["Content-Type"],
            True,
        )
        assert shape(json.loads(body)) == shape(ex.json())

    @pytest.mark.parametrize(
        "name", ["v1_chat_completions_stream.txt", "v1_chat_completions_stream_include_usage.txt"]
    )
    async def test_streamed_chunks_as_recorded(self, name: str, fake: FakeOllama) -> None:
        """The role only in the first delta, an empty final delta, the usage chunk, then [DONE]."""
        ex = exchange(name)
        status, headers, body = await raw(fake, ex.path, ex.request_json)
        assert (status, headers["Content-Type"]) == (200, ex.headers["Content-Type"])
        assert "Cache-Control" not in headers
        assert [shape(x) for x in sse_data(body)] == [shape(x) for x in recorded_sse(name)]

    async def test_the_sdk_reads_text_usage_and_stream(self, oa: openai.AsyncOpenAI) -> None:
        """openai.chat.completions: max_tokens is num_predict; streamed usage arrives last."""
        reply = await oa.chat.completions.create(
            model="gemma3-270m", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
        )
        assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (
            "tok0 tok1 tok2 ",
            "length",
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        stream = await oa.chat.completions.create(
            model="gemma3-270m",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hi"}],
        )
        chunks = [c async for c in stream]
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            == "tok0 tok1 tok2 tok3 tok4 tok5 "
        )
        assert chunks[-1].usage is not None and chunks[-1].choices == []

    async def test_tools_come_back_as_tool_calls(self, oa: openai.AsyncOpenAI) -> None:
        """With tools a tools-capable model calls the first one; finish_reason is tool_calls."""
        reply = await oa.chat.completions.create(
            model="llama3.1:8b",
            tools=[TOOL],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "weather?"}],
        )
        (call,) = reply.choices[0].message.tool_calls or []
        assert reply.choices[0].finish_reason == "tool_calls"
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "tok0"})  # type: ignore[union-attr]
        assert call.id.startswith("call_")

    async def test_tools_on_a_model_without_them_is_a_400(self, oa: openai.AsyncOpenAI) -> None:
        """A model without the tools capability refuses tools with invalid_request_error."""
        with pytest.raises(openai.BadRequestError) as err:
            await oa.chat.completions.create(
                model="gemma3-270m",
                tools=[TOOL],  # type: ignore[list-item]
                messages=[{"role": "user", "content": "hi"}],
            )
        assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]

    async def test_images_in_content_parts(self, fake: FakeOllama, oa: openai.AsyncOpenAI) -> None:
        """A data: URL image is accepted (768 prompt tokens on a vision model); anything else is a 400."""
        parts = [
            {"type": "text", "text": "what is it"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
        ]
        reply = await oa.chat.completions.create(
            model="gemma3:4b", messages=[{"role": "user", "content": parts}]
        )  # type: ignore[misc,list-item]
        assert reply.usage is not None and reply.usage.prompt_tokens == 3 + 768 + 1
        bad = [{"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}]
        status, headers, body = await raw(
            fake,
            "/v1/chat/completions",
            {"model": "gemma3:4b", "messages": [{"role": "user", "content": bad}]},
        )
        assert (status, json.loads(body)["error"]["message"]) == (400, "invalid image input")
        assert headers["Content-Type"] == "application/json; charset=utf-8"

    async def test_response_format_and_stop(self, oa: openai.AsyncOpenAI) -> None:
        """response_format json_object answers JSON; a stop string ends the reply with finish_reason stop."""
        reply = await oa.chat.completions.create(
            model="gemma3-270m",
            response_format={"type": "json_object"},
            messages=[{"role": "user", "content": "hi"}],
        )
        assert json.loads(reply.choices[0].message.content or "") == {
            "reply": "tok0 tok1 tok2 tok3 tok4 tok5 "
        }
        reply = await oa.chat.completions.create(
            model="gemma3-270m", stop=["tok2"], messages=[{"role": "user", "content": "hi"}]
        )
        assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("tok0 tok1 ", "stop")

    async def test_errors_have_openais_shape(self, fake: FakeOllama, oa: openai.AsyncOpenAI) -> None:
        """Unknown model: 404 not_found_error; no messages: 400 invalid_request_error (gin's framing)."""
        with pytest.raises(openai.NotFoundError) as err:
            await oa.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
        assert err.value.body == {
            "message": "model 'no-such-model' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
        status, headers, body = await raw(
            fake, "/v1/chat/completions", {"model": "gemma3-270m", "messages": []}
        )
        assert (status, headers["Content-Type"], body.endswith("\n")) == (
            400,
            "application/json; charset=utf-8",
            False,
        )
        assert json.loads(body)["error"]["message"] == "[] is too short - 'messages'"


class TestOtherOpenAIRoutes:
    @pytest.mark.parametrize("name", ["v1_completions_nostream.txt", "v1_completions_stream.txt"])
    async def test_completions_as_recorded(self, name: str, fake: FakeOllama) -> None:
        """/v1/completions: the recorded body or chunk sequence, shape for shape."""
        ex = exchange(name)
        status, headers, body = await raw(fake, ex.path, ex.request_json)
        assert (status, headers["Content-Type"]) == (200, ex.headers["Content-Type"])
        if ex.lines:
            assert [shape(x) for x in sse_data(body)] == [shape(x) for x in recorded_sse(name)]
        else:
            assert shape(json.loads(body)) == shape(ex.json())

    async def test_models_embeddings_and_completions_through_the_sdk(self, oa: openai.AsyncOpenAI) -> None:
        """models.list/retrieve, embeddings.create and completions.create parse with the SDK."""
        ids = [m.id async for m in oa.models.list()]
        assert "gemma3-270m:latest" in ids and (await oa.models.retrieve("gemma3-270m")).owned_by == "library"
        emb = await oa.embeddings.create(model="nomic-embed-text", input=["a", "b"])
        assert len(emb.data) == 2 and len(emb.data[1].embedding) == 768
        done = await oa.completions.create(model="gemma3-270m", prompt="hi", max_tokens=2)
        assert (done.choices[0].text, done.choices[0].finish_reason) == ("tok0 tok1 ", "length")

    async def test_one_model_shape(self, fake: FakeOllama) -> None:
        """/v1/models/{model} answers the given id, as recorded."""
        async with aiohttp.ClientSession() as http, http.get(fake.url + "/v1/models/gemma3-270m") as resp:  # type: ignore[attr-defined]
            body = await resp.text()
        assert shape(json.loads(body)) == shape(exchange("v1_models_one.txt").json())
        assert json.loads(body)["id"] == "gemma3-270m" and body.endswith("\n")


class TestResponses:
    async def test_non_streamed_keys_in_the_recorded_order(
        self, fake: FakeOllama, oa: openai.AsyncOpenAI
    ) -> None:
        """/v1/responses answers the recorded object; the SDK reads its output_text."""
        ex = exchange("v1_responses_nostream.txt")
        status, headers, body = await raw(fake, ex.path, ex.request_json)
        assert (status, headers["Content-Type"]) == (200, ex.headers["Content-Type"])
        assert shape(json.loads(body)) == shape(ex.json())
        reply = await oa.responses.create(model="gemma3-270m", input="hi", max_output_tokens=2)
        assert reply.output_text == "tok0 tok1 "

    async def test_streamed_event_sequence_and_headers(self, fake: FakeOllama) -> None:
        """event: lines in the recorded order and shapes, with Cache-Control and Connection headers."""
        ex = exchange("v1_responses_stream.txt")
        async with (
            aiohttp.ClientSession() as http,
            http.post(fake.url + ex.path, json=ex.request_json) as resp,
        ):  # type: ignore[attr-defined]
            headers, body = dict(resp.headers), await resp.text()
        assert (headers["Cache-Control"], headers["Connection"]) == ("no-cache", "keep-alive")
        names = [line[7:] for line in body.splitlines() if line.startswith("event: ")]
        recorded = [line[7:] for line in ex.lines if line.startswith("event: ")]
        assert names == recorded
        assert [shape(x) for x in sse_data(body)] == [
            shape(x) for x in recorded_sse("v1_responses_stream.txt")
        ]


class TestMessages:
    async def test_non_streamed_shape_with_and_without_headers(self, fake: FakeOllama) -> None:
        """/v1/messages needs no anthropic-version or x-api-key and answers the recorded shape."""
        for name in ("v1_messages_nostream_no_headers.txt", "v1_messages_nostream_anthropic_headers.txt"):
            ex = exchange(name)
            status, headers, body = await raw(fake, ex.path, ex.request_json)
            assert (status, headers["Content-Type"], body.endswith("\n")) == (
                200,
                ex.headers["Content-Type"],
                True,
            )
            assert shape(json.loads(body)) == shape(ex.json())

    async def test_streamed_events_as_recorded(self, fake: FakeOllama) -> None:
        """message_start, content blocks, message_delta, message_stop: names, shapes and headers."""
        ex = exchange("v1_messages_stream.txt")
        async with (
            aiohttp.ClientSession() as http,
            http.post(fake.url + ex.path, json=ex.request_json) as resp,
        ):  # type: ignore[attr-defined]
            headers, body = dict(resp.headers), await resp.text()
        assert (headers["Content-Type"], headers["Cache-Control"], headers["Connection"]) == (
            "text/event-stream",
            "no-cache",
            "keep-alive",
        )
        assert [line for line in body.splitlines() if line.startswith("event: ")] == [
            line for line in ex.lines if line.startswith("event: ")
        ]
        assert [shape(x) for x in sse_data(body)] == [
            shape(x) for x in recorded_sse("v1_messages_stream.txt")
        ]
        assert (
            sse_data(body)[0]["message"]["usage"]
            == recorded_sse("v1_messages_stream.txt")[0]["message"]["usage"]
        )

    async def test_the_sdk_reads_messages_streams_and_tool_use(
        self, claude: anthropic.AsyncAnthropic
    ) -> None:
        """anthropic.messages: text with stop_reason max_tokens, a stream, and tool_use on a tools model."""
        reply = await claude.messages.create(
            model="gemma3-270m", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
        assert (reply.content[0].text, reply.stop_reason) == ("tok0 tok1 ", "max_tokens")  # type: ignore[union-attr]
        async with claude.messages.stream(
            model="gemma3-270m", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            texts = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(texts) == "tok0 tok1 tok2 " and final.usage.output_tokens == 3
        tool = {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": TOOL["function"]["parameters"],
        }  # type: ignore[index]
        reply = await claude.messages.create(
            model="llama3.1:8b",
            max_tokens=8,
            tools=[tool],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "weather?"}],
        )
        (block,) = reply.content
        assert (reply.stop_reason, block.type, block.input) == ("tool_use", "tool_use", {"city": "tok0"})  # type: ignore[union-attr]

    async def test_errors_have_anthropics_shape(
        self, fake: FakeOllama, claude: anthropic.AsyncAnthropic
    ) -> None:
        """No max_tokens: 400 invalid_request_error from the middleware; unknown model: 404 not_found_error."""
        ex = exchange("v1_messages_no_max_tokens.txt")
        status, headers, body = await raw(fake, ex.path, ex.request_json)
        assert (status, headers["Content-Type"]) == (ex.status, ex.headers["Content-Type"])
        assert {**json.loads(body), "request_id": ""} == {**ex.json(), "request_id": ""}
        with pytest.raises(anthropic.NotFoundError) as err:
            await claude.messages.create(
                model="no-such-model", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
            )
        assert err.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
