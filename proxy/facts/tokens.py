"""Estimate a prompt's tokens before Ollama sees it, learning chars-per-token per model.

The governor cannot run the model's tokenizer, so it counts characters and divides by a ratio
learnt from Ollama's own ``prompt_eval_count`` on earlier requests; until the first answer it
assumes a conservative 3 characters per token (English is closer to 4), so a fresh estimate
errs towards a larger context rather than a truncated prompt.
"""

from __future__ import annotations

import math

from proxy.request.prompt import PromptSize

DEFAULT_CHARS_PER_TOKEN = 3.0
_LEARN_WEIGHT = 0.3
_RATIO_BOUNDS = (1.0, 8.0)


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
