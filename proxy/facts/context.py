"""Build each request's Context from the gathered facts, and feed each answer back into them.

Before the chain: memory snapshot, model facts, loaded state, a prompt-token estimate and the
model's calibration. After the answer: the chars-per-token ratio learns from Ollama's count, a
load triggers an ``/api/ps`` read (spill detection, calibration), and the record gets what was
observed (reloaded, spilled, loaded context, truncation suspicion).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping

import structlog

from policies.context import Context, FrozenJSON, GpuSnapshot
from policies.model import ModelFacts, uses_llama_server
from policies.ollama import default_num_ctx
from proxy.facts.ollama import Facts
from proxy.facts.tokens import TokenEstimator
from proxy.govern.record import GovernedRequest
from proxy.request.parse import ClientRequest

log = structlog.get_logger("ollama_governor.facts")

TRUNCATION_FILL = 0.95
"""A prompt that fills this much of the context may have been cut by Ollama without a word."""


def request_context(
    request: ClientRequest, *, client: str | None = None, headers: Mapping[str, str] | None = None
) -> Context:
    """The Context fields the request alone tells (no facts)."""
    return Context(
        endpoint=request.endpoint,
        model_name=request.model,
        body=FrozenJSON(request.body),
        client=client,
        headers=headers if headers is not None else FrozenJSON({}),
        client_num_ctx=request.num_ctx,
        client_keep_alive=request.keep_alive,
        num_predict=request.num_predict,
    )


class ContextFactory:
    """Makes Contexts for the pipeline and reads facts back from answers."""

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
        self,
        request: ClientRequest,
        *,
        client: str | None = None,
        headers: Mapping[str, str] | None = None,
        facts_wait_s: float | None = None,
    ) -> Context:
        """The full context for one request."""
        facts = self.facts
        model = await facts.model_facts(request.model, facts_wait_s)
        settings = facts.settings
        gpu = self.gpu()
        return dataclasses.replace(
            request_context(request, client=client, headers=headers),
            gpu=gpu,
            model=model,
            loaded=facts.loaded_model(request.model),
            all_loaded=facts.loaded,
            prompt_tokens=self.estimate_tokens(request),
            ollama_version=facts.version,
            default_num_ctx=self.default_num_ctx(model, gpu),
            num_parallel=settings.num_parallel,
            kv_cache_type=settings.kv_cache_type,
            calibration=facts.calibrations.get(facts.calibration_key(model)) if model else None,
        )

    def default_num_ctx(self, model: ModelFacts | None, gpu: GpuSnapshot | None) -> int:
        """The context Ollama gives ``model`` when a request names none (docs/ollama-rules.md §1):
        its Modelfile ``num_ctx``, else ``OLLAMA_CONTEXT_LENGTH``, else the tier of the server's
        total VRAM (read from the memory source when it reads GPUs; a CPU-only host has none)."""
        settings = self.facts.settings
        totals: tuple[int, ...] = ()
        if gpu is not None and gpu.known and gpu.kind in ("gpu", "unified"):
            totals = tuple(device.total_bytes for device in gpu.devices)
        return default_num_ctx(
            self.facts.version,
            totals,
            context_length_env=settings.context_length,
            modelfile_num_ctx=model.modelfile_num_ctx if model is not None else None,
            trained_ctx=model.context_length if model is not None else None,
            vision=model is not None and "vision" in model.capabilities,
            gpu_overhead_bytes=settings.gpu_overhead_bytes,
        )

    def estimate_tokens(self, request: ClientRequest) -> int:
        """The prompt's tokens as estimated now (before this answer teaches the ratio)."""
        return self.tokens.estimate(request.model, request.prompt)

    def expect_load(self, request: ClientRequest, num_ctx: int | None) -> bool:
        """Note the context Ollama is about to hold the model at; True when that is a (re)load.

        A request that sends no ``num_ctx`` gets the model's default context (Ollama reloads a
        model loaded at another one), as far as the model's facts are known.
        """
        if num_ctx is None:
            model = self.facts.cached_facts(request.model)
            if model is None:
                return False
            num_ctx = self.default_num_ctx(model, self.gpu())
        return self.facts.expect_loaded(request.model, num_ctx)

    def learn(
        self, request: ClientRequest, record: GovernedRequest, expected_load: bool
    ) -> GovernedRequest | Awaitable[GovernedRequest]:
        """Learn from the answer; after a load, the awaitable waits for the ``/api/ps`` read the
        record's observations need."""
        if expected_load and record.status == 200 and record.done_reason:
            # Ollama held the model at another context (or not at all) when this went out: a
            # fast load, e.g. a small model from the page cache, is still a load.
            record = dataclasses.replace(record, reloaded=True)
        if isinstance(record.prompt_tokens, int) and record.status == 200:
            self.tokens.learn(
                request.model,
                request.prompt,
                record.prompt_tokens,
                counts_cached=uses_llama_server(self.facts.version),
            )
        loaded = self.facts.loaded_model(request.model)
        if record.reloaded or loaded is None or loaded.provisional or record.status != 200:
            return self._after_load(request, record)
        return self._observed(request, record)

    async def _after_load(self, request: ClientRequest, record: GovernedRequest) -> GovernedRequest:
        await self.facts.refresh_loaded_soon()
        record = self._observed(request, record)
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
        return record

    def _observed(self, request: ClientRequest, record: GovernedRequest) -> GovernedRequest:
        loaded = self.facts.loaded_model(request.model)
        context_length = (loaded.context_length if loaded else None) or record.applied_num_ctx
        prompt_tokens, estimate = record.prompt_tokens, record.estimated_prompt_tokens
        suspect = bool(
            context_length
            and (
                (isinstance(prompt_tokens, int) and prompt_tokens >= TRUNCATION_FILL * context_length)
                or (isinstance(estimate, int) and estimate > context_length)
            )
        )
        return dataclasses.replace(
            record,
            spilled=loaded.spilled if loaded is not None else None,
            loaded_num_ctx=loaded.context_length if loaded is not None and not loaded.provisional else None,
            truncation_suspect=suspect,
        )
