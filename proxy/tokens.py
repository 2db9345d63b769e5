"""Estimate a prompt's tokens before Ollama sees it, learning chars-per-token per model.

The governor cannot run the model's tokenizer, so it counts characters and divides by a ratio
learnt from Ollama's own ``prompt_eval_count`` on earlier requests; until the first answer it
assumes a conservative 3 characters per token (English is closer to 4), so a fresh estimate
errs towards a larger context rather than a truncated prompt.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

DEFAULT_CHARS_PER_TOKEN = 3.0
IMAGE_TOKENS = 768
"""Ollama budgets 768 tokens per image when it fits chat history into num_ctx."""
TOKENS_PER_MESSAGE = 4
"""Chat templates wrap each message in a few role and turn tokens."""
_LEARN_WEIGHT = 0.3
_RATIO_BOUNDS = (1.0, 8.0)


@dataclass(frozen=True, slots=True)
class PromptSize:
    """What a request body holds, in the units the estimate needs."""

    chars: int
    fixed_tokens: int
    """Tokens known without a ratio: images, template overhead, a generate ``context``."""


def measure(endpoint: str, body: dict[str, Any]) -> PromptSize:
    """Count the characters and fixed tokens of a generate or chat body."""
    chars = 0
    fixed = 0
    if endpoint == "generate":
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


class TokenEstimator:
    """Chars-per-token ratios per model, learnt from Ollama's answers."""

    def __init__(self, default_chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> None:
        self.default = default_chars_per_token
        self._ratio: dict[str, float] = {}

    def chars_per_token(self, model: str) -> float:
        """The ratio used for ``model`` now."""
        return self._ratio.get(model, self.default)

    def estimate(self, model: str, size: PromptSize) -> int:
        """Estimated prompt tokens, rounded up."""
        return math.ceil(size.chars / self.chars_per_token(model)) + size.fixed_tokens

    def learn(self, model: str, size: PromptSize, prompt_eval_count: int, *, counts_cached: bool) -> None:
        """Fold one answer's ``prompt_eval_count`` into the model's ratio.

        Before Ollama 0.30 the count leaves out cached tokens, so it can only ever make the
        ratio more conservative (smaller); from 0.30 it is the whole prompt.
        """
        text_tokens = prompt_eval_count - size.fixed_tokens
        if size.chars < 64 or text_tokens <= 0:
            return  # too little text to say anything about the ratio
        observed = min(max(size.chars / text_tokens, _RATIO_BOUNDS[0]), _RATIO_BOUNDS[1])
        current = self._ratio.get(model)
        learned = observed if current is None else current + _LEARN_WEIGHT * (observed - current)
        if not counts_cached:
            learned = min(learned, current if current is not None else self.default)
        self._ratio[model] = learned

    def ratios(self) -> dict[str, float]:
        """A copy of the learnt ratios (status page)."""
        return dict(self._ratio)
