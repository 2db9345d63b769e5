"""The pieces the /v1 wiring adds, called directly with plain data: prompt counting of each
translated body, the NDJSON line splitter, and the rewrite of a resent body.

Why: a /v1 request is counted from the native body it becomes, so each route must be counted
as that native shape (a completions prompt is a generate ``prompt``, not chat ``messages``), or
the context it is given is wrong.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import aiohttp
import pytest

from policies.context import LoadedModel
from policies.decision import Decision
from proxy.compat import ROUTES, NativeRequest
from proxy.govern.pipeline import KEEP_PARSED_BODY_BYTES, Decided
from proxy.govern.record import GovernedRequest
from proxy.request.compat import COMPAT_PATHS
from proxy.request.parse import parse_request
from proxy.request.prompt import IMAGE_TOKENS, TOKENS_PER_MESSAGE, measure
from proxy.upstream.translate import MAX_LINE_BYTES, LineSplitter

LONG = "x" * 4000


def native_body(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The native body a /v1 request becomes."""
    route = ROUTES[path]
    native = route.to_native(route.parse_body(json.dumps(body).encode()))
    assert isinstance(native, NativeRequest)
    return dict(json.loads(native.encode()))


class TestMeasureTranslatedBodies:
    def test_completions_count_their_prompt(self) -> None:
        """/v1/completions becomes a generate body: its prompt is counted."""
        body = native_body("/v1/completions", {"model": "m", "prompt": LONG})
        assert measure(COMPAT_PATHS["/v1/completions"], body).chars == len(LONG)

    @pytest.mark.parametrize(
        ("path", "request_body"),
        [
            ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": LONG}]}),
            ("/v1/responses", {"model": "m", "input": LONG}),
            (
                "/v1/messages",
                {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": LONG}]},
            ),
        ],
    )
    def test_chat_routes_count_their_messages(self, path: str, request_body: dict[str, Any]) -> None:
        """Chat, Responses and Messages become chat bodies: the message text and per-message
        overhead are counted."""
        size = measure(COMPAT_PATHS[path], native_body(path, request_body))
        assert (size.chars, size.fixed_tokens) == (len(LONG), TOKENS_PER_MESSAGE)

    def test_system_prompts_and_images_count(self) -> None:
        """An Anthropic system prompt is a message; an image part is a fixed-size native image."""
        png = "iVBORw0KGgo="
        body = native_body(
            "/v1/messages",
            {
                "model": "m",
                "max_tokens": 5,
                "system": "sys",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": png},
                            },
                        ],
                    }
                ],
            },
        )
        size = measure("anthropic.messages", body)
        assert (size.chars, size.fixed_tokens) == (
            len("sys") + len("look"),
            2 * TOKENS_PER_MESSAGE + IMAGE_TOKENS,
        )

    def test_embeddings_count_the_longest_input(self) -> None:
        """/v1/embeddings becomes an embed body: each input is its own sequence."""
        body = native_body("/v1/embeddings", {"model": "m", "input": ["short", LONG]})
        assert measure("openai.embeddings", body).chars == len(LONG)

    def test_the_parsed_request_knows_the_reply_room_and_stream(self) -> None:
        """``max_tokens`` is the native ``num_predict``; ``stream`` is the client's choice."""
        raw = json.dumps(
            native_body(
                "/v1/messages",
                {
                    "model": "m",
                    "max_tokens": 7,
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                },
            )
        )
        parsed = parse_request("anthropic.messages", raw.encode())
        assert parsed is not None and (parsed.num_predict, parsed.stream, parsed.num_ctx) == (7, True, None)


class TestLineSplitter:
    def test_lines_cut_anywhere_come_out_whole(self) -> None:
        """Chunks that split lines at any byte give back the lines, in order, once each."""
        stream = b'{"a":1}\n{"b":2}\n{"c":3}'
        for cut in range(1, len(stream)):
            splitter = LineSplitter()
            lines = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
            assert [*lines, splitter.rest()] == [b'{"a":1}', b'{"b":2}', b'{"c":3}']

    def test_a_line_without_end_is_refused_past_the_limit(self) -> None:
        """A line longer than ``MAX_LINE_BYTES`` with no newline ends the stream as broken."""
        splitter = LineSplitter()
        chunk = b"x" * (1024 * 1024)
        with pytest.raises(aiohttp.ClientPayloadError):
            for _ in range(MAX_LINE_BYTES // len(chunk) + 1):
                splitter.feed(chunk)


class TestDecisionAppliedToAResend:
    def test_a_resent_body_gets_the_same_decision(self) -> None:
        """The decision applied to the body without ``think`` sets the same num_ctx and keep_alive."""
        raw = json.dumps(
            {"model": "m", "messages": [], "think": True, "options": {"num_predict": 4}}
        ).encode()
        parsed = parse_request("anthropic.messages", raw)
        assert parsed is not None
        record = GovernedRequest(ts=0.0, model="m", endpoint="anthropic.messages")
        decided = Decided(parsed, record, b"", decision=Decision(num_ctx=8192, keep_alive="10m"))
        resent = decided.applied_to({"model": "m", "messages": [], "options": {"num_predict": 4}})
        assert resent is not None
        assert json.loads(resent) == {
            "model": "m",
            "messages": [],
            "options": {"num_predict": 4, "num_ctx": 8192},
            "keep_alive": "10m",
        }

    def test_a_dry_run_resends_the_body_as_it_is(self) -> None:
        """In a dry run nothing is rewritten, on a resend either."""
        parsed = parse_request("anthropic.messages", b'{"model": "m", "messages": []}')
        assert parsed is not None
        record = GovernedRequest(ts=0.0, model="m", endpoint="anthropic.messages", dry_run=True)
        decided = Decided(parsed, record, None, decision=Decision(num_ctx=8192))
        assert decided.applied_to({"model": "m", "messages": []}) is None


class TestForRelay:
    def decided(self) -> Decided:
        raw = b'{"model":"m","prompt":"p","keep_alive":"10m","stream":false,"options":{"num_ctx":4096}}'
        parsed = parse_request("generate", raw)
        assert parsed is not None
        return Decided(
            parsed,
            GovernedRequest(ts=0.0, model="m", endpoint="generate"),
            b"sent",
            expects_load=True,
            loaded_before=(LoadedModel("m:latest", "d", 1, 1, 4096, None),),
            decision=Decision(num_ctx=8192),
        )

    def test_a_large_body_is_left_out(self) -> None:
        """Past ``KEEP_PARSED_BODY_BYTES`` only the body goes; every other field stays."""
        decided = self.decided()
        expected = dataclasses.replace(decided, request=dataclasses.replace(decided.request, body={}))
        assert decided.for_relay(KEEP_PARSED_BODY_BYTES + 1) == expected
        assert decided.request.body  # the original keeps its body

    def test_a_small_body_stays(self) -> None:
        """Holding a small body costs less than copying the decision without it."""
        decided = self.decided()
        assert decided.for_relay(KEEP_PARSED_BODY_BYTES) is decided
