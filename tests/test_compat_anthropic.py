"""``/v1/messages`` <-> ``/api/chat``: requests, whole replies, event streams and errors."""

from __future__ import annotations

import json
from typing import Any

from proxy.compat import anthropic_messages, anthropic_stream
from proxy.compat.errors import CompatError
from proxy.compat.gojson import encoder_line
from proxy.compat.native import NativeRequest, Unsupported, is_thinking_unsupported
from tests.compat_builders import FixedIds, chat_line, tool_call
from tests.compat_recordings import load, load_one

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
HEX = "0123456789abcdef01234567"


def native(body: Any, message_hex: str = HEX) -> NativeRequest[anthropic_messages.MessagesReply]:
    """``body`` translated, failing the test if Ollama would have refused it."""
    result = anthropic_messages.to_native(body, ids=FixedIds(hexes=(message_hex,)))
    assert isinstance(result, NativeRequest), result
    return result


def refused(body: Any, request_hex: str = HEX) -> CompatError:
    """The error reply for a body Ollama refuses."""
    result = anthropic_messages.to_native(body, ids=FixedIds(hexes=(request_hex,)))
    assert isinstance(result, CompatError), result
    return result


def events(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, payload) of each SSE frame."""
    parsed = []
    for frame in frames:
        head, data = frame.decode().split("\n")[:2]
        parsed.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return parsed


class TestMessagesRequest:
    def test_recorded_request_becomes_native_chat(self) -> None:
        """max_tokens becomes num_predict; nothing else is added (no default samplers)."""
        request = native(load_one("v1_messages_nostream_no_headers.txt").request)
        assert request.body == {
            "model": "gemma3-270m",
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "stream": False,
            "options": {"num_predict": 8},
        }
        assert request.relax_thinking

    def test_system_samplers_stop_and_thinking(self) -> None:
        """The system blocks, temperature, top_p, top_k, stop_sequences and thinking are carried."""
        body = {
            "model": "m",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "You are "}, {"type": "text", "text": "terse."}],
            "messages": [{"role": "User", "content": "hi"}],
            "temperature": 0.1,
            "top_p": 0.5,
            "top_k": 40,
            "stop_sequences": ["###"],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        }
        request = native(body)
        assert request.body["messages"] == [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi"},
        ]
        assert request.body["options"] == {
            "num_predict": 100,
            "stop": ["###"],
            "temperature": 0.1,
            "top_k": 40,
            "top_p": 0.5,
        }
        assert request.body["think"] is True

    def test_blocks_tool_use_and_tool_result(self) -> None:
        """Text and image blocks merge into one message; tool_use is a tool call; tool_result a tool message."""
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is it?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "png"}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "an image"}],
                    }
                ],
            },
        ]
        tools = [
            {
                "name": "lookup",
                "description": "Look up",
                "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
            }
        ]
        body = native({"model": "m", "max_tokens": 5, "messages": messages, "tools": tools}).body
        assert body["messages"] == [
            {"role": "user", "content": "What is it?", "images": [PNG_1PX]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "toolu_1", "function": {"name": "lookup", "arguments": {"q": "png"}}}],
            },
            {"role": "tool", "content": "an image", "tool_call_id": "toolu_1"},
        ]
        assert body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look up",
                    "parameters": tools[0]["input_schema"],
                },
            }
        ]

    def test_recorded_missing_max_tokens_bytes(self) -> None:
        """No max_tokens: the recorded 400, byte for byte (request id from the id source)."""
        recorded = load_one("v1_messages_no_max_tokens.txt")
        request_id = json.loads(recorded.body)["request_id"].removeprefix("req_")
        error = refused(recorded.request, request_id)
        assert (error.status, error.body) == (recorded.status, recorded.body)
        assert error.headers == {"Content-Type": recorded.headers["Content-Type"]}

    def test_other_refusals_use_ollamas_messages(self) -> None:
        """Missing model or messages, and bad blocks, are refused as the middleware does."""
        assert (
            refused({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).message
            == "model is required"
        )
        assert refused({"model": "m", "max_tokens": 5}).message == "messages is required"
        url_image = [{"type": "image", "source": {"type": "url", "url": "https://x"}}]
        assert refused(
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": url_image}]}
        ).message == ("invalid image source type: url. Only base64 images are supported.")
        bad_data = [{"type": "image", "source": {"type": "base64", "data": "abc"}}]
        assert refused(
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": bad_data}]}
        ).message == ("invalid base64 image data: illegal base64 data at input byte 0")

    def test_web_search_tool_is_left_to_ollama(self) -> None:
        """A web_search server tool cannot be reproduced: the request is Unsupported."""
        body = {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        }
        assert isinstance(anthropic_messages.to_native(body), Unsupported)

    def test_estimated_input_tokens_match_the_recording(self) -> None:
        """The estimate is bytes/4 of role and content: 6 for the recorded question."""
        assert native(load_one("v1_messages_stream.txt").request).reply.estimated_input_tokens == 6

    def test_thinking_unsupported_answer_is_recognised(self) -> None:
        """The native 400 a non-thinking model gives is spotted so think can be dropped and resent."""
        request = native(
            {
                "model": "gemma3-270m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "thinking": {"type": "enabled"},
            }
        )
        assert is_thinking_unsupported(
            400, b'{"error":"\\"gemma3-270m\\" does not support thinking"}', request.model
        )
        assert "think" not in request.without_think().body


class TestMessagesReply:
    def test_recorded_message_bytes(self) -> None:
        """Both recorded non-streamed answers are reproduced byte for byte."""
        for name in ("v1_messages_nostream_no_headers.txt", "v1_messages_nostream_anthropic_headers.txt"):
            recorded = load_one(name)
            reply = json.loads(recorded.body)
            request = native(recorded.request, reply["id"].removeprefix("msg_"))
            answer = chat_line(reply["content"][0]["text"], done=True, done_reason="length", eval_count=8)
            assert encoder_line(anthropic_messages.from_native(answer, request)) == recorded.body

    def test_tool_calls_become_tool_use_blocks(self) -> None:
        """Thinking, text and tool calls become blocks in that order; stop_reason is tool_use."""
        answer = chat_line(
            "Checking.", thinking="plan", tool_calls=[tool_call("lookup", {"q": "x"})], done=True
        )
        reply = anthropic_messages.from_native(
            answer, native({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
        )
        assert reply["content"] == [
            {"type": "thinking", "thinking": "plan"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_abc123", "name": "lookup", "input": {"q": "x"}},
        ]
        assert reply["stop_reason"] == "tool_use"


class TestMessagesStream:
    def test_recorded_stream_bytes(self) -> None:
        """The recorded stream is reproduced: estimated start usage, text block, delta usage, stop."""
        recorded = load_one("v1_messages_stream.txt")
        parsed = events(recorded.frames)
        request = native(recorded.request, parsed[0][1]["message"]["id"].removeprefix("msg_"))
        translator = anthropic_stream.StreamTranslator(request)
        texts = [payload["delta"]["text"] for name, payload in parsed if name == "content_block_delta"]
        frames: list[bytes] = []
        for text in texts:
            frames += translator.feed(chat_line(text))
        frames += translator.feed(chat_line(done=True, done_reason="length", eval_count=len(texts)))
        assert frames == recorded.frames
        assert anthropic_messages.response_headers(True) == {
            k: v for k, v in recorded.headers.items() if k in ("Cache-Control", "Connection", "Content-Type")
        }

    def test_first_native_line_yields_its_events_at_once(self) -> None:
        """The first line yields message_start, the text block start and its delta immediately."""
        translator = anthropic_stream.StreamTranslator(
            native(
                {
                    "model": "m",
                    "max_tokens": 5,
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                }
            )
        )
        assert [name for name, _ in events(translator.feed(chat_line("#")))] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
        ]

    def test_tool_call_closes_text_and_gets_its_own_block(self) -> None:
        """A tool call closes the open text block and is sent whole as an input_json_delta."""
        translator = anthropic_stream.StreamTranslator(
            native(
                {
                    "model": "m",
                    "max_tokens": 5,
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                }
            )
        )
        translator.feed(chat_line("Let me check."))
        parsed = events(
            translator.feed(chat_line(tool_calls=[tool_call("lookup", {"q": "x"}, call_id="toolu_9")]))
            + translator.feed(chat_line(done=True))
        )
        assert parsed == [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {}},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": '{"q":"x"}'},
                },
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 1}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use"},
                    "usage": {"input_tokens": 15, "output_tokens": 8},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]

    def test_thinking_block_precedes_text(self) -> None:
        """Thinking streams in block 0 and is closed when the text starts in block 1."""
        translator = anthropic_stream.StreamTranslator(
            native(
                {
                    "model": "m",
                    "max_tokens": 5,
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                }
            )
        )
        parsed = events(translator.feed(chat_line(thinking="hmm")) + translator.feed(chat_line("ok")))
        assert [(name, payload.get("index")) for name, payload in parsed] == [
            ("message_start", None),
            ("content_block_start", 0),
            ("content_block_delta", 0),
            ("content_block_stop", 0),
            ("content_block_start", 1),
            ("content_block_delta", 1),
        ]


class TestMessagesErrors:
    def test_recorded_model_not_found_bytes(self) -> None:
        """The native 404 becomes the recorded Anthropic not_found_error, with the writer's newline."""
        exchanges = {e.path: e for e in load("error_unknown_model.txt")}
        native_answer, recorded = exchanges["/api/chat"], exchanges["/v1/messages"]
        request_id = json.loads(recorded.body)["request_id"].removeprefix("req_")
        error = anthropic_messages.error_from_native(
            404, native_answer.body, native(recorded.request), ids=FixedIds(hexes=(request_id,))
        )
        assert (error.status, error.body) == (recorded.status, recorded.body)
        assert error.headers == {"Content-Type": recorded.headers["Content-Type"]}

    def test_overloaded_status_maps_to_overloaded_error(self) -> None:
        """A native 503 (queue full) is Anthropic's overloaded_error."""
        error = anthropic_messages.error_from_native(
            503,
            b'{"error":"server busy"}',
            native({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
        )
        assert json.loads(error.body)["error"] == {"type": "overloaded_error", "message": "server busy"}
