"""``/v1/embeddings`` <-> ``/api/embed``: requests, replies and errors."""

from __future__ import annotations

import base64
import struct
from typing import Any

from proxy.compat import openai_embeddings
from proxy.compat.errors import CompatError
from proxy.compat.gojson import encoder_line
from proxy.compat.native import NativeRequest
from tests.compat_recordings import load_one


def native(body: Any) -> NativeRequest[openai_embeddings.EmbeddingReply]:
    """``body`` translated, failing the test if Ollama would have refused it."""
    result = openai_embeddings.to_native(body)
    assert isinstance(result, NativeRequest), result
    return result


class TestEmbeddingsRequest:
    def test_recorded_request_becomes_native_embed(self) -> None:
        """model and input go to /api/embed; options is Go's nil map until the governor sets it."""
        request = native(load_one("v1_embeddings.txt").request)
        assert (request.path, request.body) == (
            "/api/embed",
            {"model": "gemma3-270m", "input": "hi", "options": None},
        )
        governed = request.with_governance(num_ctx=2048, keep_alive="5m")
        assert governed.body == {
            "model": "gemma3-270m",
            "input": "hi",
            "keep_alive": "5m",
            "options": {"num_ctx": 2048},
        }

    def test_empty_string_input_becomes_one_empty_string(self) -> None:
        """input "" is sent as [""], dimensions when set."""
        assert native({"model": "m", "input": "", "dimensions": 8}).body["input"] == [""]
        assert native({"model": "m", "input": "", "dimensions": 8}).body["dimensions"] == 8

    def test_missing_or_empty_input_is_refused(self) -> None:
        """No input, or an empty list, is Ollama's 400 "invalid input"."""
        for body in ({"model": "m"}, {"model": "m", "input": []}):
            result = openai_embeddings.to_native(body)
            assert isinstance(result, CompatError)
            assert (result.status, result.message) == (400, "invalid input")

    def test_unknown_encoding_format_is_refused(self) -> None:
        """encoding_format other than float or base64 is refused with Ollama's wording."""
        result = openai_embeddings.to_native({"model": "m", "input": "x", "encoding_format": "int8"})
        assert isinstance(result, CompatError)
        assert (
            result.message
            == "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64']."
        )


class TestEmbeddingsReply:
    def test_float_embeddings_become_an_embedding_list(self) -> None:
        """Each vector becomes a data entry; usage counts the prompt tokens twice over."""
        answer = {
            "model": "m:latest",
            "embeddings": [[0.25, -1.5e-07], [1.0, 2.0]],
            "total_duration": 5,
            "prompt_eval_count": 3,
        }
        reply = openai_embeddings.from_native(answer, native({"model": "m", "input": ["a", "b"]}))
        assert encoder_line(reply) == (
            b'{"object":"list","data":[{"object":"embedding","embedding":[0.25,-1.5e-7],"index":0},'
            b'{"object":"embedding","embedding":[1,2],"index":1}],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}\n'
        )

    def test_base64_embeddings_are_little_endian_float32(self) -> None:
        """encoding_format base64 packs each vector as little-endian float32."""
        answer = {"model": "m", "embeddings": [[0.5, -2.0]], "prompt_eval_count": 1}
        reply = openai_embeddings.from_native(
            answer, native({"model": "m", "input": "a", "encoding_format": "BASE64"})
        )
        packed = base64.b64decode(reply["data"][0]["embedding"])
        assert struct.unpack("<2f", packed) == (0.5, -2.0)

    def test_recorded_not_implemented_error_bytes(self) -> None:
        """The native 501 of a model without embeddings becomes the recorded OpenAI api_error."""
        recorded = load_one("v1_embeddings.txt")
        native_answer = load_one("embed.txt")
        error = openai_embeddings.error_from_native(
            native_answer.status, native_answer.body, native(recorded.request)
        )
        assert (error.status, error.body) == (recorded.status, recorded.body)
        assert error.headers == {"Content-Type": recorded.headers["Content-Type"]}
