"""The route registry, governance of translated requests, and real native streams end to end."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.compat import (
    ROUTES,
    CompatError,
    NativeRequest,
    anthropic_stream,
    encoder_line,
    openai_chat,
    openai_completions,
    openai_responses,
    openai_responses_stream,
)
from proxy.compat.native import GO_ZERO_UNIX, unix_seconds
from tests.compat_builders import FixedIds, ScriptedClock, chat_line, generate_line
from tests.compat_recordings import load_one

REQUESTS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
    "/v1/completions": {"model": "m", "prompt": "x", "stream": True},
    "/v1/embeddings": {"model": "m", "input": "x"},
    "/v1/responses": {"model": "m", "input": "x", "stream": True},
    "/v1/messages": {
        "model": "m",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
    },
}


def sse_payloads(frames: list[bytes]) -> list[dict[str, Any]]:
    """The JSON payload of every data line, skipping [DONE]."""
    payloads = []
    for frame in frames:
        for line in frame.decode().split("\n"):
            if line.startswith("data: ") and line != "data: [DONE]":
                payloads.append(json.loads(line.removeprefix("data: ")))
    return payloads


class TestRoutes:
    def test_every_translated_route_is_registered(self) -> None:
        """The five /v1 routes that load a model are translated; /v1/models is left to pass through."""
        assert set(ROUTES) == set(REQUESTS)
        assert "/v1/models" not in ROUTES

    @pytest.mark.parametrize("path", sorted(REQUESTS))
    def test_route_sends_to_its_native_path(self, path: str) -> None:
        """Each route parses raw bytes, names the model, and translates to its native path."""
        route = ROUTES[path]
        body = route.parse_body(json.dumps(REQUESTS[path]).encode())
        assert route.model_of(body) == "m"
        request = route.to_native(body)
        assert isinstance(request, NativeRequest)
        assert request.path == route.native_path
        assert (route.stream_translator is None) == (path == "/v1/embeddings")

    @pytest.mark.parametrize("path", sorted(REQUESTS))
    def test_route_refuses_a_body_that_is_not_json(self, path: str) -> None:
        """A broken body is a 400 in the route's own error shape."""
        error = ROUTES[path].parse_body(b"{")
        assert isinstance(error, CompatError)
        assert error.status == 400
        shape = json.loads(error.body)
        assert shape["error"]["type"] == "invalid_request_error"
        assert ("request_id" in shape) == (path == "/v1/messages")


class TestGovernance:
    def test_num_ctx_and_keep_alive_are_set_in_go_order(self) -> None:
        """with_governance adds options.num_ctx (options sorted) and keep_alive in Go's field order."""
        request = ROUTES["/v1/chat/completions"].to_native(REQUESTS["/v1/chat/completions"])
        assert isinstance(request, NativeRequest)
        governed = request.with_governance(num_ctx=8192, keep_alive="10m")
        assert list(governed.body) == ["model", "messages", "stream", "keep_alive", "options"]
        assert list(governed.body["options"].items()) == [
            ("num_ctx", 8192),
            ("temperature", 1.0),
            ("top_p", 1.0),
        ]
        assert "num_ctx" not in request.body["options"] and "keep_alive" not in request.body

    def test_generate_keep_alive_sits_before_options(self) -> None:
        """On /api/generate keep_alive follows stream and format, before options."""
        request = ROUTES["/v1/completions"].to_native(REQUESTS["/v1/completions"])
        assert isinstance(request, NativeRequest)
        governed = request.with_governance(keep_alive=-1)
        assert list(governed.body) == [
            "model",
            "prompt",
            "suffix",
            "system",
            "template",
            "stream",
            "keep_alive",
            "options",
        ]
        assert governed.body["keep_alive"] == -1

    def test_none_leaves_the_body_alone(self) -> None:
        """Governing with nothing decided changes nothing."""
        request = ROUTES["/v1/messages"].to_native(REQUESTS["/v1/messages"])
        assert isinstance(request, NativeRequest)
        assert request.with_governance().body == request.body


class TestNativeShapes:
    @pytest.mark.parametrize(
        ("name", "builder"), [("chat_stream.txt", chat_line), ("generate_stream.txt", generate_line)]
    )
    def test_builders_match_recorded_native_lines(self, name: str, builder: Any) -> None:
        """The test builders write the same keys, in the same order, as the recorded native lines."""
        lines = load_one(name).ndjson
        assert list(builder("x")) == list(lines[0])
        assert list(builder(done=True)) == list(lines[-1])

    def test_created_at_reads_as_go_unix_seconds(self) -> None:
        """created_at becomes Unix seconds; Go's zero time and a missing field read as None."""
        assert unix_seconds("2026-12-01T20:52:11.545962884Z") == 1796158331
        assert unix_seconds("2026-12-01T21:52:11+01:00") == 1796158331
        assert unix_seconds("0001-01-01T00:00:00Z") is None
        assert unix_seconds(None) is None

    def test_missing_created_at_is_go_zero_time_in_a_whole_reply(self) -> None:
        """A whole answer without created_at reports Go's zero time, as Ollama would."""
        request = openai_chat.to_native(
            {"model": "m", "messages": [{"role": "user", "content": "x"}]}, ids=FixedIds(1)
        )
        assert isinstance(request, NativeRequest)
        assert openai_chat.from_native({"done": True}, request)["created"] == GO_ZERO_UNIX


class TestRecordedNativeStreams:
    """The recorded native streams, fed line by line to each translator."""

    def test_chat_stream(self) -> None:
        """Every recorded /api/chat line becomes one chunk, created pinned to the first line."""
        native_lines = load_one("chat_stream.txt").ndjson
        request = openai_chat.to_native(REQUESTS["/v1/chat/completions"], ids=FixedIds(5))
        assert isinstance(request, NativeRequest)
        translator = openai_chat.StreamTranslator(request)
        per_line = [translator.feed(line) for line in native_lines]
        assert all(frames for frames in per_line)
        chunks = sse_payloads([f for frames in per_line for f in frames])
        contents = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
        assert contents == [line["message"]["content"] for line in native_lines[:-1]]
        assert {c["created"] for c in chunks} == {unix_seconds(native_lines[0]["created_at"])}
        assert chunks[-1]["choices"][0]["finish_reason"] == native_lines[-1]["done_reason"]
        assert per_line[-1][-1] == b"data: [DONE]\n\n"

    def test_generate_stream(self) -> None:
        """Every recorded /api/generate line becomes one completion chunk, then [DONE]."""
        native_lines = load_one("generate_stream.txt").ndjson
        request = openai_completions.to_native(REQUESTS["/v1/completions"], ids=FixedIds(5))
        assert isinstance(request, NativeRequest)
        translator = openai_completions.StreamTranslator(request, clock=ScriptedClock(1))
        frames = [f for line in native_lines for f in translator.feed(line)]
        texts = [c["choices"][0]["text"] for c in sse_payloads(frames)]
        assert texts == [line["response"] for line in native_lines]
        assert frames[-1] == b"data: [DONE]\n\n"

    def test_responses_stream(self) -> None:
        """The recorded /api/chat stream ends in response.completed holding the whole text and usage."""
        native_lines = load_one("chat_stream.txt").ndjson
        request = openai_responses.to_native(REQUESTS["/v1/responses"], ids=FixedIds(1, 2))
        assert isinstance(request, NativeRequest)
        translator = openai_responses_stream.StreamTranslator(request, ids=FixedIds())
        completed = sse_payloads([f for line in native_lines for f in translator.feed(line)])[-1]
        assert completed["type"] == "response.completed"
        text = "".join(line["message"]["content"] for line in native_lines)
        assert completed["response"]["output"][0]["content"][0]["text"] == text
        assert completed["response"]["usage"]["output_tokens"] == native_lines[-1]["eval_count"]

    def test_messages_stream(self) -> None:
        """The recorded /api/chat stream ends in message_delta with its usage, then message_stop."""
        native_lines = load_one("chat_stream.txt").ndjson
        request = ROUTES["/v1/messages"].to_native(REQUESTS["/v1/messages"])
        assert isinstance(request, NativeRequest)
        translator = anthropic_stream.StreamTranslator(request)
        payloads = sse_payloads([f for line in native_lines for f in translator.feed(line)])
        assert [p["type"] for p in payloads[-2:]] == ["message_delta", "message_stop"]
        assert payloads[-2]["usage"] == {"input_tokens": 15, "output_tokens": 8}

    def test_whole_native_answer_through_the_registry(self) -> None:
        """The recorded /api/chat whole answer goes through the registry to a chat completion."""
        answer = json.loads(load_one("chat_nostream.txt").body)
        route = ROUTES["/v1/chat/completions"]
        request = route.to_native({"model": "gemma3-270m", "messages": [{"role": "user", "content": "x"}]})
        assert isinstance(request, NativeRequest)
        reply = json.loads(encoder_line(route.from_native(answer, request)))
        assert reply["choices"][0]["message"]["content"] == answer["message"]["content"]
        assert reply["usage"] == {"prompt_tokens": 15, "completion_tokens": 12, "total_tokens": 27}
