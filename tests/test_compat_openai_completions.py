"""``/v1/completions`` <-> ``/api/generate``: requests, whole replies, streams and errors."""

from __future__ import annotations

import json
from typing import Any

from proxy.compat import openai_completions
from proxy.compat.errors import CompatError
from proxy.compat.gojson import encoder_line
from proxy.compat.native import NativeRequest
from tests.compat_builders import FixedIds, ScriptedClock, generate_line
from tests.compat_recordings import load, load_one


def native(body: Any, completion_id: int = 7) -> NativeRequest[openai_completions.CompletionReply]:
    """``body`` translated, failing the test if Ollama would have refused it."""
    result = openai_completions.to_native(body, ids=FixedIds(completion_id))
    assert isinstance(result, NativeRequest), result
    return result


class TestCompletionsRequest:
    def test_recorded_request_becomes_native_generate(self) -> None:
        """The prompt goes to /api/generate with num_predict and Ollama's fixed sampler defaults."""
        request = native(load_one("v1_completions_nostream.txt").request)
        assert request.path == "/api/generate"
        assert request.body == {
            "model": "gemma3-270m",
            "prompt": "Why is the sky blue?",
            "suffix": "",
            "system": "",
            "template": "",
            "stream": False,
            "options": {
                "frequency_penalty": 0.0,
                "num_predict": 8,
                "presence_penalty": 0.0,
                "temperature": 1.0,
                "top_p": 1.0,
            },
        }

    def test_sampling_fields_and_suffix(self) -> None:
        """stop list, temperature, seed, penalties, top_p and suffix are carried; top_p 0 means 1."""
        body = {
            "model": "m",
            "prompt": "p",
            "suffix": "s",
            "stop": ["\n", "END"],
            "temperature": 0.5,
            "seed": 3,
            "frequency_penalty": 1.5,
            "top_p": 0,
        }
        request = native(body)
        assert request.body["suffix"] == "s"
        assert request.body["options"] == {
            "frequency_penalty": 1.5,
            "presence_penalty": 0.0,
            "seed": 3,
            "stop": ["\n", "END"],
            "temperature": 0.5,
            "top_p": 1.0,
        }

    def test_logprobs_count_turns_on_logprobs(self) -> None:
        """logprobs n > 0 asks the native API for logprobs with n top entries."""
        body = native({"model": "m", "prompt": "p", "logprobs": 3}).body
        assert (body["logprobs"], body["top_logprobs"]) == (True, 3)

    def test_non_string_stop_entry_is_refused(self) -> None:
        """Unlike chat, completions refuses a stop entry that is not a string, naming its Go type."""
        result = openai_completions.to_native(
            {"model": "m", "prompt": "p", "stop": ["a", 1]}, ids=FixedIds(1)
        )
        assert isinstance(result, CompatError)
        assert (result.status, result.message) == (400, "invalid type for 'stop' field: float64")

    def test_prompt_list_is_a_go_type_error(self) -> None:
        """Ollama takes prompt as a string only; a list fails in the decoder."""
        result = openai_completions.to_native({"model": "m", "prompt": ["a"]}, ids=FixedIds(1))
        assert isinstance(result, CompatError)
        assert (
            result.message
            == "json: cannot unmarshal array into Go struct field CompletionRequest.prompt of type string"
        )


class TestCompletionsReply:
    def test_recorded_completion_bytes(self) -> None:
        """The recorded non-streamed answer is reproduced byte for byte from its native answer."""
        recorded = load_one("v1_completions_nostream.txt")
        request = native(recorded.request, 486)
        answer = generate_line(
            "The sky has blue, because\nit", created=1796158474, done=True, done_reason="length", eval_count=8
        )
        assert encoder_line(openai_completions.from_native(answer, request)) == recorded.body

    def test_recorded_stream_bytes(self) -> None:
        """The recorded stream is reproduced, each chunk stamped with the time it was written."""
        recorded = load_one("v1_completions_stream.txt")
        request = native(recorded.request, 595)
        chunks = [json.loads(f.removeprefix(b"data: ")) for f in recorded.frames if f != b"data: [DONE]\n\n"]
        clock = ScriptedClock(*(c["created"] for c in chunks))
        translator = openai_completions.StreamTranslator(request, clock=clock)
        frames: list[bytes] = []
        for chunk in chunks[:-1]:
            frames += translator.feed(generate_line(chunk["choices"][0]["text"]))
        frames += translator.feed(generate_line(done=True, done_reason="length", eval_count=len(chunks) - 1))
        assert frames == recorded.frames
        assert openai_completions.response_headers(True) == {"Content-Type": recorded.headers["Content-Type"]}

    def test_include_usage_puts_zero_usage_in_chunks_and_real_usage_last(self) -> None:
        """With include_usage every chunk has zero usage and a usage-only chunk precedes [DONE]."""
        request = native(
            {"model": "m", "prompt": "p", "stream": True, "stream_options": {"include_usage": True}}
        )
        translator = openai_completions.StreamTranslator(request, clock=ScriptedClock(100))
        first = translator.feed(generate_line("Hi"))
        last = translator.feed(generate_line(done=True, prompt_eval_count=5, eval_count=1))
        assert json.loads(first[0].removeprefix(b"data: "))["usage"] == {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
        }
        usage_chunk = json.loads(last[1].removeprefix(b"data: "))
        assert (usage_chunk["choices"], usage_chunk["usage"]) == (
            [],
            {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        )
        assert last[2] == b"data: [DONE]\n\n"

    def test_first_native_line_yields_its_frame_at_once(self) -> None:
        """The first native line produces its SSE frame immediately."""
        translator = openai_completions.StreamTranslator(
            native({"model": "m", "prompt": "p", "stream": True})
        )
        assert len(translator.feed(generate_line("("))) == 1

    def test_native_not_found_is_openai_not_found(self) -> None:
        """A native 404 becomes an OpenAI not_found_error with the native message."""
        native_answer = next(e for e in load("error_unknown_model.txt") if e.path == "/api/generate")
        error = openai_completions.error_from_native(
            404, native_answer.body, native({"model": "no-such-model", "prompt": "hi"})
        )
        assert (
            error.body
            == b'{"error":{"message":"model \'no-such-model\' not found","type":"not_found_error","param":null,"code":null}}\n'
        )
