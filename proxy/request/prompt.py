"""How big a request's prompt is, in the units a token estimate needs: characters and fixed tokens.

Counting happens once per request, when the body is parsed; the chars-per-token ratio that turns
it into tokens is learnt per model (``proxy.facts.tokens``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from policies.records import cheap_init

IMAGE_TOKENS = 768
"""Ollama budgets 768 tokens per image when it fits chat history into num_ctx."""
TOKENS_PER_MESSAGE = 4
"""Chat templates wrap each message in a few role and turn tokens."""


@cheap_init
@dataclass(frozen=True, slots=True)
class PromptSize:
    """What a request body holds, in the units the estimate needs."""

    chars: int
    fixed_tokens: int
    """Tokens known without a ratio: images, template overhead, a generate ``context``."""


EMBED_ENDPOINTS = frozenset({"embed", "embeddings", "openai.embeddings"})
"""Routes that embed their input: no reply is generated, and each input is its own sequence."""
GENERATE_ENDPOINTS = frozenset({"generate", "openai.completions"})
"""Routes whose native body is ``/api/generate``'s (``prompt``); every other route sends ``messages``."""


def measure(endpoint: str, body: dict[str, Any]) -> PromptSize:
    """Count the characters and fixed tokens of a native body (generate, chat or embed).

    A ``/v1`` route's body is the native one it was translated to: ``/v1/completions`` is a
    generate body, ``/v1/embeddings`` an embed body, the others chat bodies.
    """
    chars = 0
    fixed = 0
    if endpoint in EMBED_ENDPOINTS:
        # Each input is embedded on its own, so the context must hold the longest one, not the sum.
        raw = body.get("input") if "input" in body else body.get("prompt")
        inputs = raw if isinstance(raw, list) else [raw]
        chars = max((len(item) for item in inputs if isinstance(item, str)), default=0)
    elif endpoint in GENERATE_ENDPOINTS:
        for key in ("prompt", "system", "suffix"):
            value = body.get(key)
            if isinstance(value, str):
                chars += len(value)
        fixed += _count(body.get("images")) * IMAGE_TOKENS
        fixed += _count(body.get("context"))
    else:
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else ():
            if not isinstance(message, dict):
                continue
            fixed += TOKENS_PER_MESSAGE + _count(message.get("images")) * IMAGE_TOKENS
            for key in ("content", "thinking"):
                value = message.get(key)
                if isinstance(value, str):
                    chars += len(value)
            if message.get("tool_calls"):
                chars += len(json.dumps(message["tool_calls"]))
        if body.get("tools"):
            chars += len(json.dumps(body["tools"]))
    return PromptSize(chars=chars, fixed_tokens=fixed)


def _count(value: object) -> int:
    return len(value) if isinstance(value, list) else 0
