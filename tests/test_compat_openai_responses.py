"""``/v1/responses`` <-> ``/api/chat``: requests, whole replies, event streams and errors."""

from __future__ import annotations

import json
from typing import Any

from proxy.compat import openai_responses, openai_responses_stream
from proxy.compat.errors import CompatError
from proxy.compat.gojson import encoder_line
from proxy.compat.native import NativeRequest, Unsupported
from tests.compat_builders import FixedIds, ScriptedClock, chat_line, tool_call
from tests.compat_recordings import load, load_one

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def native(body: Any, *ids: int) -> NativeRequest[openai_responses.ResponsesReply]:
    """``body`` translated, failing the test if Ollama would have refused it."""
    result = openai_responses.to_native(body, ids=FixedIds(*(ids or (1, 2))))
    assert isinstance(result, NativeRequest), result
    return result


def refused(body: Any) -> CompatError:
    """The error reply for a body Ollama refuses."""
    result = openai_responses.to_native(body, ids=FixedIds(1, 2))
    assert isinstance(result, CompatError), result
    return result


def events(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, payload) of each SSE frame."""
    parsed = []
    for frame in frames:
        head, data = frame.decode().split("\n")[:2]
        parsed.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return parsed


class TestResponsesRequest:
    def test_recorded_request_becomes_native_chat(self) -> None:
        """A string input is one user message; max_output_tokens is num_predict; stream is explicit."""
        request = native(load_one("v1_responses_nostream.txt").request)
        assert request.body == {
            "model": "gemma3-270m",
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "stream": False,
            "options": {"num_predict": 8, "temperature": 1.0},
        }

    def test_instructions_items_and_tools(self) -> None:
        """Instructions, message items, function calls with outputs and tools all reach /api/chat."""
        body = {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Look "},
                        {
                            "type": "input_image",
                            "detail": "auto",
                            "image_url": f"data:image/png;base64,{PNG_1PX}",
                        },
                    ],
                },
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "I should call f."},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"x":1}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "done"},
            ],
            "tools": [
                {"type": "function", "name": "f", "description": "F", "parameters": {"type": "object"}}
            ],
            "temperature": 0.3,
            "top_p": 0.8,
        }
        request = native(body)
        assert request.body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Look ", "images": [PNG_1PX]},
            {
                "role": "assistant",
                "content": "",
                "thinking": "I should call f.",
                "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": {"x": 1}}}],
            },
            {"role": "tool", "content": "done", "tool_call_id": "call_1"},
        ]
        assert request.body["tools"] == [
            {
                "type": "function",
                "function": {"name": "f", "description": "F", "parameters": {"type": "object"}},
            }
        ]
        assert request.body["options"] == {"temperature": 0.3, "top_p": 0.8}

    def test_json_schema_text_format_becomes_format(self) -> None:
        """text.format json_schema passes its schema on as the native format."""
        schema = {"type": "object", "properties": {"a": {"type": "number"}}}
        body = {
            "model": "m",
            "input": "x",
            "text": {"format": {"type": "json_schema", "name": "s", "schema": schema}},
        }
        assert native(body).body["format"] == schema

    def test_namespace_tools_are_expanded(self) -> None:
        """A namespace tool becomes its members named namespace.member."""
        tool = {
            "type": "namespace",
            "name": "fs",
            "tools": [{"type": "function", "name": "read", "parameters": {"type": "object"}}],
        }
        assert (
            native({"model": "m", "input": "x", "tools": [tool]}).body["tools"][0]["function"]["name"]
            == "fs.read"
        )

    def test_web_search_tool_is_left_to_ollama(self) -> None:
        """The built-in web_search tool cannot be reproduced: the request is Unsupported."""
        result = openai_responses.to_native({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})
        assert isinstance(result, Unsupported)

    def test_bad_input_items_are_refused_with_ollamas_messages(self) -> None:
        """Unknown item and content types fail with Ollama's nested messages."""
        assert (
            refused({"model": "m", "input": [{"type": "bogus"}]}).message
            == 'input[0]: unknown input item type: "bogus"'
        )
        assert (
            refused({"model": "m", "input": [{}]}).message
            == "input[0]: input item missing required 'type' field"
        )
        bad_content = {"model": "m", "input": [{"role": "user", "content": [{"type": "video"}]}]}
        assert refused(bad_content).message == "input[0]: content[0]: unknown content type: video"
        assert refused({"model": "m", "input": 5}).message == (
            "input must be a string or array: json: cannot unmarshal number into Go value of type []json.RawMessage"
        )

    def test_file_input_is_refused(self) -> None:
        """input_file content is not supported by Ollama."""
        body = {
            "model": "m",
            "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
        }
        assert refused(body).message == "file inputs are not currently supported"


class TestResponsesReply:
    def test_recorded_response_bytes(self) -> None:
        """The recorded non-streamed response is reproduced byte for byte."""
        recorded = load_one("v1_responses_nostream.txt")
        request = native(recorded.request, 887293, 635703)
        answer = chat_line(
            "This story is a story of an ocean",
            created=1796158492,
            done=True,
            done_reason="length",
            eval_count=8,
        )
        reply = openai_responses.from_native(answer, request, clock=ScriptedClock(1796158492))
        assert encoder_line(reply) == recorded.body

    def test_tool_calls_become_function_call_items(self) -> None:
        """Native tool calls become function_call output items instead of a message."""
        request = native({"model": "m", "input": "x"}, 5, 6)
        answer = chat_line(tool_calls=[tool_call("f", {"q": "a"})], thinking="plan", done=True)
        output = openai_responses.from_native(answer, request, clock=ScriptedClock(1))["output"]
        assert output == [
            {
                "id": "rs_resp_5",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "plan"}],
                "encrypted_content": "plan",
            },
            {
                "id": "fc_resp_5_0",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_abc123",
                "name": "f",
                "arguments": '{"q":"a"}',
            },
        ]


class TestResponsesStream:
    def test_recorded_stream_bytes(self) -> None:
        """The recorded event stream is reproduced: sorted keys, sequence numbers, full response objects."""
        recorded = load_one("v1_responses_stream.txt")
        request = native(recorded.request, 197338, 432854)
        parsed = events(recorded.frames)
        deltas = [payload["delta"] for name, payload in parsed if name == "response.output_text.delta"]
        opened = parsed[0][1]["response"]["created_at"]
        closed = parsed[-1][1]["response"]["completed_at"]
        clock = ScriptedClock(opened, opened, closed, closed)
        translator = openai_responses_stream.StreamTranslator(request, clock=clock, ids=FixedIds())
        frames: list[bytes] = []
        for delta in deltas:
            frames += translator.feed(chat_line(delta))
        frames += translator.feed(chat_line(done=True, done_reason="length", eval_count=len(deltas)))
        assert frames == recorded.frames
        assert openai_responses.response_headers(True) == {
            k: v for k, v in recorded.headers.items() if k in ("Cache-Control", "Connection", "Content-Type")
        }

    def test_first_native_line_yields_its_events_at_once(self) -> None:
        """The first line opens the response and its text at once: created ... output_text.delta."""
        translator = openai_responses_stream.StreamTranslator(
            native({"model": "m", "input": "x", "stream": True}), ids=FixedIds()
        )
        names = [name for name, _ in events(translator.feed(chat_line("The")))]
        assert names == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
        ]

    def test_function_call_events_and_final_output(self) -> None:
        """A streamed tool call gets its added/delta/done events and ends up in the completed output."""
        translator = openai_responses_stream.StreamTranslator(
            native({"model": "m", "input": "x", "stream": True}), clock=ScriptedClock(9), ids=FixedIds(77)
        )
        translator.feed(chat_line(tool_calls=[tool_call("f", {"a": 1})]))
        closing = events(translator.feed(chat_line(done=True)))
        assert [name for name, _ in closing] == ["response.completed"]
        assert closing[0][1]["response"]["output"] == [
            {
                "arguments": '{"a":1}',
                "call_id": "call_abc123",
                "id": "fc_77_0",
                "name": "f",
                "status": "completed",
                "type": "function_call",
            }
        ]

    def test_reasoning_is_its_own_output_item(self) -> None:
        """Thinking streams as a reasoning item that is closed before the message starts."""
        translator = openai_responses_stream.StreamTranslator(
            native({"model": "m", "input": "x", "stream": True}), ids=FixedIds(12)
        )
        names = [
            name
            for name, _ in events(
                translator.feed(chat_line(thinking="hmm")) + translator.feed(chat_line("ok"))
            )
        ]
        assert names[2:] == [
            "response.output_item.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
        ]


class TestResponsesErrors:
    def test_native_not_found_in_a_stream_keeps_stream_headers(self) -> None:
        """A native 404 for a streamed request is OpenAI's error, with the no-cache headers already set."""
        native_answer = next(e for e in load("error_unknown_model.txt") if e.path == "/api/chat")
        request = native({"model": "no-such-model", "input": "hi", "stream": True})
        error = openai_responses.error_from_native(404, native_answer.body, request)
        assert error.headers == {
            "Cache-Control": "no-cache",
            "Connection": "keep-alive",
            "Content-Type": "application/json",
        }
        assert json.loads(error.body)["error"]["type"] == "not_found_error"
