"""Parsing and rewriting governed bodies: only what must change changes."""

from __future__ import annotations

import json

import pytest

from policies import Decision
from proxy.request.parse import parse_request
from proxy.request.rewrite import rewrite_body


def parse(body: object) -> object:
    return parse_request("chat", json.dumps(body).encode())


class TestParse:
    def test_reads_client_values(self) -> None:
        """num_ctx, keep_alive, num_predict and stream are read as Ollama reads them."""
        parsed = parse_request(
            "generate",
            b'{"model":"m","prompt":"p","keep_alive":"10m","stream":false,'
            b'"options":{"num_ctx":8192.9,"num_predict":64}}',
        )
        assert parsed is not None
        assert (parsed.num_ctx, parsed.keep_alive, parsed.num_predict, parsed.stream) == (
            8192,
            "10m",
            64,
            False,
        )

    def test_defaults(self) -> None:
        """Absent values are None and stream defaults to true."""
        parsed = parse({"model": "m", "messages": []})
        assert parsed is not None
        assert (parsed.num_ctx, parsed.keep_alive, parsed.stream) == (None, None, True)

    @pytest.mark.parametrize(
        "raw",
        [
            b'{"model":"m",',
            b"[1,2]",
            b'{"prompt":"no model"}',
            b'{"model":"m","options":[]}',
            b'{"model":"m","options":{"num_ctx":"8192"}}',
            b'{"model":"m","options":{"num_ctx":true}}',
            b'{"model":"m","keep_alive":"300"}',
        ],
    )
    def test_ungovernable_bodies_are_left_to_ollama(self, raw: bytes) -> None:
        """Whatever Ollama would refuse is not governed, so the client gets Ollama's answer."""
        assert parse_request("chat", raw) is None


class TestRewrite:
    def test_unchanged_decision_keeps_the_bytes(self) -> None:
        """No change means no re-serialisation: the client's bytes go upstream as they were."""
        parsed = parse({"model": "m", "options": {"num_ctx": 4096}, "keep_alive": 60})
        assert parsed is not None
        assert rewrite_body(parsed, Decision(num_ctx=4096, keep_alive=60)) is None

    def test_sets_and_keeps_everything_else(self) -> None:
        """Only options.num_ctx and keep_alive change; other fields and options stay."""
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "héllo"}],
            "options": {"temperature": 0.1},
        }
        parsed = parse(body)
        assert parsed is not None
        rewritten = json.loads(rewrite_body(parsed, Decision(num_ctx=8192, keep_alive="30m")) or b"")
        assert rewritten == {**body, "options": {"temperature": 0.1, "num_ctx": 8192}, "keep_alive": "30m"}

    def test_removes_when_decision_clears(self) -> None:
        """A decision of None removes the field, so Ollama's default applies."""
        parsed = parse({"model": "m", "options": {"num_ctx": 4096}, "keep_alive": "5m"})
        assert parsed is not None
        rewritten = json.loads(rewrite_body(parsed, Decision()) or b"")
        assert rewritten == {"model": "m", "options": {}}
