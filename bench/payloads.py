"""What the fake upstream answers, and what the load generator expects back, byte for byte.

Both sides import this module, so every streamed line can be checked exactly: line ``seq`` of
stream ``stream_id`` carries both numbers and a CRC of them in Ollama's own NDJSON shape, so a
lost, repeated, reordered or altered line is caught. The model facts are gemma3-270m's, as
recorded from Ollama (tests/data/show_gemma3_270m.json), so the governor's ``headroom`` policy
does its real arithmetic.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

MODEL = "bench"
"""The model clients ask for; Ollama's tags and ps list it as ``bench:latest``."""
CREATED_AT = "2026-11-25T11:50:07.297993894Z"
DIGEST = "d929f07bd2c39a197066f5b10aab6e62aabbb02f748322780c0b9135a6fe8385"
OLLAMA_VERSION = "0.24.0"
LOADED_CONTEXT = 8192
"""The context ``/api/ps`` reports: ``headroom`` keeps it (sticky), so nothing "reloads"."""
LOAD_DURATION_NS = 1_000_000
"""Well under the governor's 500 ms reload threshold: every request is a warm one."""

_DETAILS = {
    "parent_model": "",
    "format": "gguf",
    "family": "gemma3",
    "families": ["gemma3"],
    "parameter_size": "268.10M",
    "quantization_level": "Q4_K_M",
}


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


TAGS = _compact(
    {
        "models": [
            {
                "name": f"{MODEL}:latest",
                "model": f"{MODEL}:latest",
                "modified_at": "2026-11-25T11:48:13.104418079Z",
                "size": 253113841,
                "digest": DIGEST,
                "details": _DETAILS,
            }
        ]
    }
)
PS = _compact(
    {
        "models": [
            {
                "name": f"{MODEL}:latest",
                "model": f"{MODEL}:latest",
                "size": 477798912,
                "digest": DIGEST,
                "details": _DETAILS,
                "expires_at": "2099-01-01T00:00:00Z",
                "size_vram": 477798912,
                "context_length": LOADED_CONTEXT,
            }
        ]
    }
)
VERSION = _compact({"version": OLLAMA_VERSION})
SHOW = _compact(
    {
        "parameters": 'stop                           "<end_of_turn>"',
        "details": _DETAILS,
        "model_info": {
            "gemma3.attention.head_count": 4,
            "gemma3.attention.head_count_kv": 1,
            "gemma3.attention.key_length": 256,
            "gemma3.attention.layer_norm_rms_epsilon": 1e-06,
            "gemma3.attention.sliding_window": 512,
            "gemma3.attention.value_length": 256,
            "gemma3.block_count": 18,
            "gemma3.context_length": 32768,
            "gemma3.embedding_length": 640,
            "gemma3.feed_forward_length": 2048,
            "gemma3.rope.freq_base": 1000000,
            "general.architecture": "gemma3",
            "general.parameter_count": 268098176,
            "tokenizer.ggml.tokens": None,
        },
        "tensors": [
            {"name": "output_norm.weight", "type": "F32", "shape": [640]},
            {"name": "token_embd.weight", "type": "Q8_0", "shape": [640, 262144]},
        ],
        "capabilities": ["completion"],
        "modified_at": "2026-11-25T11:48:13.104418079Z",
    }
)
CHAT_REPLY = _compact(
    {
        "model": MODEL,
        "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": "The sky is blue because of Rayleigh scattering."},
        "done": True,
        "done_reason": "stop",
        "total_duration": 12_000_000,
        "load_duration": LOAD_DURATION_NS,
        "prompt_eval_count": 15,
        "prompt_eval_duration": 2_000_000,
        "eval_count": 10,
        "eval_duration": 9_000_000,
    }
)
"""The whole answer to a non-streamed chat: 15 prompt tokens, 10 generated."""

_LINE_HEAD = b'{"model":"%s","created_at":"%s","message":{"role":"assistant","content":"' % (
    MODEL.encode(),
    CREATED_AT.encode(),
)


def stream_line(stream_id: int, seq: int) -> bytes:
    """Line ``seq`` of stream ``stream_id`` (without its newline): the numbers and their CRC."""
    token = b"%d:%d" % (stream_id, seq)
    return b'%b%b:%08x "},"done":false}' % (_LINE_HEAD, token, zlib.crc32(token))


def final_line(lines: int) -> bytes:
    """The closing ``done: true`` object of a stream of ``lines`` tokens (without its newline)."""
    return _compact(
        {
            "model": MODEL,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "length",
            "total_duration": 3_000_000 + lines * 1_000_000,
            "load_duration": LOAD_DURATION_NS,
            "prompt_eval_count": 15,
            "prompt_eval_duration": 2_000_000,
            "eval_count": lines,
            "eval_duration": lines * 1_000_000,
        }
    )


def chat_request(*, stream: bool, stream_id: int = 0, lines: int = 1, interval_ms: float = 0.0) -> bytes:
    """A client's chat body. The user's message tells the fake which stream to send and how
    fast; ``num_predict`` (the number of lines) is what a real client would set."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"id={stream_id} interval_ms={interval_ms:g}"}],
        "stream": stream,
    }
    if stream:
        body["options"] = {"num_predict": lines}
    return _compact(body)


def parse_stream_request(message: str) -> tuple[int, float]:
    """The (stream id, interval in ms) a chat request's message asks for."""
    fields = dict(part.split("=", 1) for part in message.split() if "=" in part)
    return int(fields.get("id", 0)), float(fields.get("interval_ms", 0))
