"""Build each request's Context from the gathered facts, and feed each answer back into them.

Before the chain: GPU snapshot, model facts, loaded state, a prompt-token estimate and the
model's calibration. After the answer: the chars-per-token ratio learns from Ollama's count, a
load triggers an ``/api/ps`` read (spill detection, calibration), and the result is annotated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from policies.context import Context, GpuSnapshot
from policies.model import uses_llama_server
from proxy.facts import Facts
from proxy.intercept import GovernedRequest, request_fields
from proxy.tokens import TokenEstimator

log = structlog.get_logger("ollama_governor.facts")

TRUNCATION_FILL = 0.95
"""A prompt that fills this much of the context may have been cut by Ollama without a word."""


class ContextFactory:
    """Makes Contexts for the interceptor and reads facts back from results."""

    def __init__(
        self,
        facts: Facts,
        gpu: Callable[[], GpuSnapshot | None],
        tokens: TokenEstimator | None = None,
    ) -> None:
        self.facts = facts
        self.gpu = gpu
        self.tokens = tokens or TokenEstimator()

    async def build(
        self, request: GovernedRequest, http_request: web.Request | None, *, facts_wait_s: float | None = None
    ) -> Context:
        """The full context for one request (``http_request`` is None for warm-up calls)."""
        facts = self.facts
        model = await facts.model_facts(request.model, facts_wait_s)
        settings = facts.settings
        return Context(
            **request_fields(request, http_request),
            gpu=self.gpu(),
            model=model,
            loaded=facts.loaded_model(request.model),
            all_loaded=facts.loaded,
            prompt_tokens=self.tokens.estimate(request.model, request.prompt),
            ollama_version=facts.version,
            num_parallel=settings.num_parallel,
            kv_cache_type=settings.kv_cache_type,
            calibration=facts.calibrations.get(facts.calibration_key(model)) if model else None,
        )

    def on_forward(self, request: GovernedRequest, num_ctx: int | None, event: dict[str, Any]) -> None:
        """Remember the context Ollama is about to hold the model at (see ``expect_loaded``)."""
        if num_ctx is not None:
            event["load_expected"] = self.facts.expect_loaded(request.model, num_ctx)

    def after_response(self, request: GovernedRequest, event: dict[str, Any]) -> Awaitable[None] | None:
        """Learn from the answer; after a load, return the ps read the result must wait for."""
        estimate = self.tokens.estimate(request.model, request.prompt)
        event["estimated_prompt_tokens"] = estimate
        if event.pop("load_expected", False) and event.get("status") == 200 and event.get("done_reason"):
            # Ollama held the model at another context (or not at all) when this went out: a
            # fast load, e.g. a small model from the page cache, is still a load.
            event["reloaded"] = True
        prompt_tokens = event.get("prompt_tokens")
        if isinstance(prompt_tokens, int) and event.get("status") == 200:
            self.tokens.learn(
                request.model,
                request.prompt,
                prompt_tokens,
                counts_cached=uses_llama_server(self.facts.version),
            )
        loaded = self.facts.loaded_model(request.model)
        if event.get("reloaded") or loaded is None or loaded.provisional or event.get("status") != 200:
            return self._after_load(request, event)
        self._annotate(request, event)
        return None

    async def _after_load(self, request: GovernedRequest, event: dict[str, Any]) -> None:
        await self.facts.refresh_loaded_soon()
        self._annotate(request, event)
        loaded = self.facts.loaded_model(request.model)
        if loaded is not None and loaded.spilled:
            log.warning(
                "spill",
                model=request.model,
                num_ctx=loaded.context_length,
                size=loaded.size_bytes,
                size_vram=loaded.size_vram_bytes,
                on_gpu_fraction=round(loaded.size_vram_bytes / loaded.size_bytes, 3),
            )

    def _annotate(self, request: GovernedRequest, event: dict[str, Any]) -> None:
        loaded = self.facts.loaded_model(request.model)
        event["spilled"] = loaded.spilled if loaded is not None else None
        context_length = (loaded.context_length if loaded else None) or event.get("applied_num_ctx")
        prompt_tokens = event.get("prompt_tokens")
        estimate = event.get("estimated_prompt_tokens")
        event["truncation_suspect"] = bool(
            context_length
            and (
                (isinstance(prompt_tokens, int) and prompt_tokens >= TRUNCATION_FILL * context_length)
                or (isinstance(estimate, int) and estimate > context_length)
            )
        )
