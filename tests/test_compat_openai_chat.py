"""``/v1/chat/completions`` <-> ``/api/chat``: requests, whole replies, streams and errors."""

from __future__ import annotations

import json
from typing import Any

from proxy.compat import openai_chat
from proxy.compat.errors import CompatError
from proxy.compat.gojson import encoder_line
from proxy.compat.native import NativeRequest
from tests.compat_builders import FixedIds, ScriptedClock, chat_line, tool_call
from tests.compat_recordings import load, load_one

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def native(body: Any, *ids: int) -> NativeRequest[openai_chat.ChatReply]:
    """``body`` translated, failing the test if Ollama would have refused it."""
    result = openai_chat.to_native(body, ids=FixedIds(*(ids or (7,))))
    assert isinstance(result, NativeRequest), result
    return result


def refused(body: Any) -> CompatError:
    """The error reply for a body Ollama refuses."""
    result = openai_chat.to_native(body, ids=FixedIds(7))
    assert isinstance(result, CompatError), result
    return result


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


class TestChatRequest:
    def test_recorded_request_becomes_native_chat(self) -> None:
        """The recorded request maps max_tokens to num_predict and adds Ollama's default samplers."""
        recorded = load_one("v1_chat_completions_nostream.txt")
        request = native(recorded.request, 881)
        assert request.path == "/api/chat"
        assert request.body == {
            "model": "gemma3-270m",
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "stream": False,
            "options": {"num_predict": 8, "temperature": 1.0, "top_p": 1.0},
        }
        assert request.encode() == (
            b'{"model":"gemma3-270m","messages":[{"role":"user","content":"Why is the sky blue?"}],'
            b'"stream":false,"options":{"num_predict":8,"temperature":1,"top_p":1}}\n'
        )

    def test_sampling_fields_become_sorted_options(self) -> None:
        """stop, max_tokens, temperature, top_p, seed and both penalties land in options, keys sorted."""
        body = {
            "model": "m",
            "messages": [user("hi")],
            "stop": "END",
            "max_tokens": 32,
            "temperature": 0.2,
            "top_p": 0.9,
            "seed": 42,
            "frequency_penalty": 0.5,
            "presence_penalty": -0.5,
        }
        options = native(body).body["options"]
        assert list(options) == sorted(options)
        assert options == {
            "frequency_penalty": 0.5,
            "num_predict": 32,
            "presence_penalty": -0.5,
            "seed": 42,
            "stop": ["END"],
            "temperature": 0.2,
            "top_p": 0.9,
        }

    def test_stop_list_keeps_only_strings(self) -> None:
        """A stop list drops entries that are not strings; an empty result is Go's nil slice."""
        assert native({"model": "m", "messages": [user("x")], "stop": ["a", 1, "b"]}).body["options"][
            "stop"
        ] == ["a", "b"]
        assert native({"model": "m", "messages": [user("x")], "stop": [1]}).body["options"]["stop"] is None

    def test_json_schema_becomes_format(self) -> None:
        """response_format json_schema passes its schema as the native format; json_object is "json"."""
        schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
        body = {
            "model": "m",
            "messages": [user("x")],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        }
        assert native(body).body["format"] == schema
        body["response_format"] = {"type": " JSON_Object "}
        assert native(body).body["format"] == "json"
        body["response_format"] = {"type": "text"}
        assert "format" not in native(body).body

    def test_reasoning_effort_becomes_think(self) -> None:
        """reasoning_effort is sent as think; "none" turns thinking off; reasoning.effort wins."""
        assert (
            native({"model": "m", "messages": [user("x")], "reasoning_effort": "high"}).body["think"]
            == "high"
        )
        assert (
            native({"model": "m", "messages": [user("x")], "reasoning_effort": "none"}).body["think"] is False
        )
        body = {
            "model": "m",
            "messages": [user("x")],
            "reasoning": {"effort": "low"},
            "reasoning_effort": "high",
        }
        assert native(body).body["think"] == "low"

    def test_invalid_reasoning_effort_is_refused(self) -> None:
        """An unknown effort is a 400 in OpenAI's error shape, as the middleware writes it."""
        error = refused({"model": "m", "messages": [user("x")], "reasoning_effort": "huge"})
        assert error.status == 400
        assert error.headers == {"Content-Type": "application/json; charset=utf-8"}
        assert json.loads(error.body) == {
            "error": {
                "message": 'invalid reasoning value: \'huge\' (must be "high", "medium", "low", "max", or "none")',
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }

    def test_image_part_becomes_its_own_message_with_images(self) -> None:
        """Each content part is a native message; an image_url data URI becomes base64 images."""
        content = [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
        ]
        messages = native({"model": "m", "messages": [user(content)]}).body["messages"]
        assert messages == [
            {"role": "user", "content": "What is this?"},
            {"role": "user", "content": "", "images": [PNG_1PX]},
        ]

    def test_remote_image_url_is_refused(self) -> None:
        """An http image URL is refused with Ollama's message."""
        content = [{"type": "image_url", "image_url": "https://example.com/cat.png"}]
        error = refused({"model": "m", "messages": [user(content)]})
        assert (
            error.message == "image URLs are not currently supported, please use base64 encoded data instead"
        )

    def test_bad_base64_image_is_refused(self) -> None:
        """A data URI whose payload is not base64 is "invalid image input"."""
        content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]
        assert refused({"model": "m", "messages": [user(content)]}).message == "invalid image input"

    def test_tool_calls_and_tool_results_are_carried(self) -> None:
        """tools pass through; assistant tool_calls get parsed arguments; a tool result names its tool."""
        tools = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ]
        messages = [
            user("Weather in Paris?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        ]
        body = native({"model": "m", "messages": messages, "tools": tools}).body
        assert body["tools"] == tools
        assert body["messages"] == [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": "18C", "tool_name": "get_weather", "tool_call_id": "call_1"},
        ]
        assert list(body) == ["model", "messages", "stream", "tools", "options"]

    def test_unparseable_tool_call_arguments_are_refused(self) -> None:
        """Arguments that are not a JSON object are "invalid tool call arguments"."""
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1,2]"}}
        error = refused(
            {"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": [call]}]}
        )
        assert error.message == "invalid tool call arguments"

    def test_missing_content_without_tool_calls_is_refused(self) -> None:
        """A message with null content and no tool calls is refused naming Go's %T of nil."""
        assert (
            refused({"model": "m", "messages": [{"role": "user"}]}).message
            == "invalid message content type: <nil>"
        )

    def test_empty_messages_are_refused_byte_for_byte(self) -> None:
        """No messages: the middleware's 400, no trailing newline, gin's content type."""
        error = refused({"model": "m", "messages": []})
        assert error.status == 400
        assert error.body == (
            b'{"error":{"message":"[] is too short - \'messages\'","type":"invalid_request_error","param":null,"code":null}}'
        )

    def test_wrong_field_type_gives_go_unmarshal_error(self) -> None:
        """A string max_tokens fails as Go's decoder does, naming struct, field and type."""
        error = refused({"model": "m", "messages": [user("x")], "max_tokens": "8"})
        assert (
            error.message
            == "json: cannot unmarshal string into Go struct field ChatCompletionRequest.max_tokens of type int"
        )

    def test_nested_wrong_type_names_innermost_struct(self) -> None:
        """A bad message role names the Message struct and the full field path."""
        error = refused({"model": "m", "messages": [{"role": 5, "content": "x"}]})
        assert (
            error.message
            == "json: cannot unmarshal number into Go struct field Message.messages.role of type string"
        )

    def test_fractional_max_tokens_quotes_the_number(self) -> None:
        """A number that is not an int is quoted in the error, as Go quotes its literal."""
        error = refused({"model": "m", "messages": [user("x")], "max_tokens": 8.5})
        assert (
            error.message
            == "json: cannot unmarshal number 8.5 into Go struct field ChatCompletionRequest.max_tokens of type int"
        )

    def test_keys_match_case_insensitively_and_unknown_keys_vanish(self) -> None:
        """Go matches MAX_TOKENS to max_tokens and drops fields it does not know."""
        request = native({"model": "m", "messages": [user("x")], "MAX_TOKENS": 3, "user": "u1", "n": 2})
        assert request.body["options"]["num_predict"] == 3

    def test_stream_flags_reach_the_reply(self) -> None:
        """stream goes to the native body; include_usage and the minted id to the reply facts."""
        recorded = load_one("v1_chat_completions_stream_include_usage.txt")
        request = native(recorded.request, 409)
        assert request.stream and request.body["stream"] is True
        assert request.reply == openai_chat.ChatReply(completion_id="chatcmpl-409", include_usage=True)

    def test_model_of_names_the_client_model(self) -> None:
        """model_of reads the model the client asked for, and None where there is none."""
        assert openai_chat.model_of({"model": "gemma3-270m", "messages": []}) == "gemma3-270m"
        assert openai_chat.model_of({"messages": []}) is None
        assert openai_chat.model_of([1]) is None


class TestChatReply:
    def test_recorded_completion_bytes(self) -> None:
        """The recorded non-streamed answer is reproduced byte for byte from its native answer."""
        recorded = load_one("v1_chat_completions_nostream.txt")
        request = native(recorded.request, 881)
        answer = chat_line(
            "We will be spending most of the day",
            created=1796158438,
            done=True,
            done_reason="length",
            eval_count=8,
        )
        assert encoder_line(openai_chat.from_native(answer, request)) == recorded.body
        assert openai_chat.response_headers(False) == {"Content-Type": recorded.headers["Content-Type"]}

    def test_tool_calls_become_openai_tool_calls(self) -> None:
        """Native tool calls come back with JSON-string arguments and finish_reason tool_calls."""
        answer = chat_line(tool_calls=[tool_call("get_weather", {"city": "Paris", "unit": "C"})], done=True)
        choice = openai_chat.from_native(answer, native({"model": "m", "messages": [user("x")]}))["choices"][
            0
        ]
        assert choice == {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "index": 0,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"C"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }

    def test_thinking_becomes_reasoning(self) -> None:
        """A native thinking text is returned as message.reasoning."""
        answer = chat_line("42", thinking="Let me think.", done=True)
        message = openai_chat.from_native(answer, native({"model": "m", "messages": [user("x")]}))["choices"][
            0
        ]["message"]
        assert message == {"role": "assistant", "content": "42", "reasoning": "Let me think."}


def stream_of(
    recorded_name: str, completion_id: int, prompt_eval_count: int = 15
) -> tuple[list[bytes], list[bytes]]:
    """The recorded frames, and the frames translated from native lines carrying their texts."""
    recorded = load_one(recorded_name)
    request = native(recorded.request, completion_id)
    translator = openai_chat.StreamTranslator(request, clock=ScriptedClock(0))
    chunks = [json.loads(frame[6:]) for frame in recorded.frames if frame != b"data: [DONE]\n\n"]
    texts = [
        c["choices"][0]["delta"]["content"]
        for c in chunks
        if c["choices"] and "content" in c["choices"][0]["delta"]
    ]
    finish = next(
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    )
    created = chunks[0]["created"]
    frames: list[bytes] = []
    for offset, text in enumerate(texts):
        frames += translator.feed(chat_line(text, created=created + 2 * offset))
    frames += translator.feed(
        chat_line(
            created=created + 11,
            done=True,
            done_reason=finish,
            prompt_eval_count=prompt_eval_count,
            eval_count=len(texts),
        )
    )
    frames += translator.close()
    return recorded.frames, frames


class TestChatStream:
    def test_recorded_stream_bytes(self) -> None:
        """The recorded stream is reproduced: role once, pinned created, empty-delta finish, [DONE]."""
        recorded, translated = stream_of("v1_chat_completions_stream.txt", 587)
        assert translated == recorded

    def test_recorded_include_usage_stream_bytes(self) -> None:
        """With include_usage the usage chunk (empty choices) comes between finish and [DONE]."""
        recorded, translated = stream_of("v1_chat_completions_stream_include_usage.txt", 409)
        assert translated == recorded

    def test_first_native_line_yields_its_frame_at_once(self) -> None:
        """The first native line produces its SSE frame immediately, nothing is held back."""
        translator = openai_chat.StreamTranslator(
            native({"model": "m", "messages": [user("x")], "stream": True})
        )
        frames = translator.feed(chat_line("Hello"))
        assert len(frames) == 1
        assert json.loads(frames[0].removeprefix(b"data: "))["choices"][0]["delta"] == {
            "role": "assistant",
            "content": "Hello",
        }

    def test_tool_call_delta_and_finish_reason(self) -> None:
        """A tool call goes out in a delta, and the stop that follows is reported as tool_calls."""
        translator = openai_chat.StreamTranslator(
            native({"model": "m", "messages": [user("x")], "stream": True})
        )
        first = translator.feed(chat_line(tool_calls=[tool_call("f", {"a": 1})]))
        last = translator.feed(chat_line(done=True, done_reason="stop"))
        delta = json.loads(first[0].removeprefix(b"data: "))["choices"][0]["delta"]
        assert delta["tool_calls"] == [
            {
                "id": "call_abc123",
                "index": 0,
                "type": "function",
                "function": {"name": "f", "arguments": '{"a":1}'},
            }
        ]
        finish = json.loads(last[0].removeprefix(b"data: "))
        assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
        assert last[-1] == b"data: [DONE]\n\n"

    def test_thinking_and_content_in_one_line_are_split(self) -> None:
        """A line with both thinking and content becomes a reasoning chunk, then a content chunk."""
        translator = openai_chat.StreamTranslator(
            native({"model": "m", "messages": [user("x")], "stream": True})
        )
        frames = translator.feed(chat_line("Answer", thinking="Hmm"))
        deltas = [json.loads(f.removeprefix(b"data: "))["choices"][0]["delta"] for f in frames]
        assert deltas == [{"role": "assistant", "reasoning": "Hmm"}, {"content": "Answer"}]

    def test_mid_stream_native_error_ends_as_ollama_ends_it(self) -> None:
        """A native error line mid-stream becomes Ollama's empty chunk (model "") and no [DONE]."""
        translator = openai_chat.StreamTranslator(
            native({"model": "m", "messages": [user("x")], "stream": True})
        )
        translator.feed(chat_line("Hi"))
        frames = translator.feed({"error": "llama-server crashed"})
        chunk = json.loads(frames[0].removeprefix(b"data: "))
        assert (chunk["model"], chunk["choices"][0]["delta"]) == ("", {"content": ""})
        assert b"data: [DONE]\n\n" not in frames
        assert translator.native_error == "llama-server crashed"


class TestChatErrors:
    def test_recorded_model_not_found_bytes(self) -> None:
        """The native 404 for an unknown model becomes the recorded OpenAI not_found_error reply."""
        exchanges = {e.path: e for e in load("error_unknown_model.txt")}
        native_answer, recorded = exchanges["/api/chat"], exchanges["/v1/chat/completions"]
        error = openai_chat.error_from_native(
            native_answer.status, native_answer.body, native(recorded.request)
        )
        assert (error.status, error.body) == (recorded.status, recorded.body)
        assert error.headers == {"Content-Type": recorded.headers["Content-Type"]}

    def test_body_that_is_not_json_gives_go_decoder_error(self) -> None:
        """A body gin cannot decode is a 400 carrying Go's decoder message."""
        error = openai_chat.parse_body(b'{"model": x}')
        assert isinstance(error, CompatError)
        assert error.message == "invalid character 'x' looking for beginning of value"
