"""One governed request, end to end, with no HTTP in it: ``decide`` before Ollama, ``finish`` after.

``decide``: facts -> Context -> the rule's policy chain -> Decision -> the rewritten body and the
record so far. ``finish``: Ollama's answer -> what the facts learn and observe -> the ledger. The
aiohttp handler, ``warm`` and the benchmarks all run requests through this one pipeline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from policies.context import GpuSnapshot, LoadedModel
from policies.decision import Decision
from policies.duration import format_keep_alive
from policies.outcome import Outcome
from policies.records import cheap_init
from policies.scheduler import Expected
from proxy.facts.context import ContextFactory, request_context
from proxy.govern.boundary import safe_await, safecall
from proxy.govern.chain import ChainOutcome, run_chain
from proxy.govern.record import Answer, GovernedRequest, Observation
from proxy.govern.rules import Governor
from proxy.govern.stall import StepLog
from proxy.ledger.ledger import Ledger
from proxy.request.parse import ClientRequest
from proxy.request.rewrite import rewrite_body

log = structlog.get_logger("ollama_governor.pipeline")

KEEP_PARSED_BODY_BYTES = 64 * 1024
"""Up to this size the parsed body stays with a relayed decision (``Decided.for_relay``)."""


@cheap_init
@dataclass(frozen=True, slots=True)
class Decided:
    """What ``decide`` settled: the record so far, and what to send (or the refusal)."""

    request: ClientRequest
    record: GovernedRequest
    body: bytes | None
    """The rewritten body; None means send the client's own bytes."""
    rejection: str | None = None
    """When set, answer ``400 {"error": rejection}`` and send nothing."""
    expects_load: bool = False
    """Ollama did not hold the model at the context sent: this request (re)loads it."""
    loaded_before: tuple[LoadedModel, ...] = ()
    """What Ollama held when the request went out (to see what its scheduler did for it)."""
    decision: Decision | None = None
    """What the policies settled (None when refused)."""

    def applied_to(self, body: dict[str, Any]) -> bytes | None:
        """The decision applied to another body of the same request (a resend that changed a
        field no policy decides, e.g. without ``think``); None: send ``body`` as it is."""
        if self.decision is None or self.record.dry_run:
            return None
        return rewrite_body(dataclasses.replace(self.request, body=body), self.decision)

    def for_relay(self, body_bytes: int) -> Decided:
        """This decision as it is kept while the answer streams (``finish`` never reads the
        client's parsed body): a body larger than ``KEEP_PARSED_BODY_BYTES`` is left out, so it
        costs its bytes once, not three times; a smaller one is kept, which costs less than
        copying the decision without it."""
        if body_bytes <= KEEP_PARSED_BODY_BYTES:
            return self
        return dataclasses.replace(self, request=dataclasses.replace(self.request, body={}))


class Pipeline:
    """Decides and records governed requests. ``governor`` is swapped whole on reload; a request
    in flight keeps the one it started with."""

    def __init__(
        self, governor: Governor, contexts: ContextFactory, ledger: Ledger, steps: StepLog | None = None
    ) -> None:
        self.governor = governor
        self.contexts = contexts
        self.ledger = ledger
        self.steps = steps
        """Where the chain notes the policy steps that held the loop (read by the stall monitor)."""
        self._pending: set[asyncio.Task[GovernedRequest]] = set()

    async def decide(
        self,
        request: ClientRequest,
        *,
        client: str | None = None,
        headers: Mapping[str, str] | None = None,
        warm: bool = False,
        facts_wait_s: float | None = None,
    ) -> Decided:
        """Run the rule's policies for ``request`` and say what to send."""
        governor = self.governor
        started_ts = time.time()
        loaded_before = self.contexts.facts.loaded
        start = Decision(num_ctx=request.num_ctx, keep_alive=request.keep_alive)
        policies = governor.policies_for(request.model, request.endpoint)
        gpu = ctx = None
        if not policies:
            outcome = ChainOutcome(start)
        else:
            ctx = await safe_await(
                "facts",
                self.contexts.build(request, client=client, headers=headers, facts_wait_s=facts_wait_s),
                model=request.model,
            )
            if ctx is None:  # facts are best effort; the request goes on with what it tells
                ctx = request_context(request, client=client, headers=headers)
            gpu = ctx.gpu
            outcome = await run_chain(policies, ctx, start, governor.config.policy_timeout_s, self.steps)
            _warn(request, outcome)
        decision = outcome.decision
        dry_run = governor.config.dry_run
        tokens = ctx.prompt_tokens if ctx is not None else None  # estimated once, for both
        if decision.rejection is not None:
            record = self._record(
                request, outcome, started_ts, dry_run=dry_run, warm=warm, gpu=gpu, tokens=tokens
            )
            return Decided(request, record, None, rejection=decision.rejection)
        rewriting = time.perf_counter()
        body = None if dry_run else rewrite_body(request, decision)
        if self.steps is not None:
            self.steps.since("rewrite body", rewriting)  # a large body is encoded on the loop
        sent_num_ctx = request.num_ctx if body is None else decision.num_ctx
        sent_keep_alive = request.keep_alive if body is None else decision.keep_alive
        expects_load = (
            safecall("expect load", self.contexts.expect_load, request, sent_num_ctx, sent_keep_alive) is True
        )
        prediction = None
        if ctx is not None:
            prediction = safecall("predict", self.contexts.predict, ctx, sent_num_ctx, sent_keep_alive)
        record = self._record(
            request,
            outcome,
            started_ts,
            dry_run=dry_run,
            warm=warm,
            gpu=gpu,
            prediction=prediction,
            tokens=tokens,
        )
        return Decided(
            request, record, body, expects_load=expects_load, loaded_before=loaded_before, decision=decision
        )

    def _record(
        self,
        request: ClientRequest,
        outcome: ChainOutcome,
        started_ts: float,
        *,
        dry_run: bool,
        warm: bool,
        gpu: GpuSnapshot | None,
        prediction: Expected | None = None,
        tokens: int | None = None,
    ) -> GovernedRequest:
        """The record of a decided request, before Ollama answers it; ``tokens`` is the prompt's
        estimate the Context already holds (made here when there was none)."""
        decision = outcome.decision
        if tokens is None:
            tokens = safecall("estimate tokens", self.contexts.estimate_tokens, request)
        return GovernedRequest(
            ts=round(started_ts, 3),
            model=request.model,
            endpoint=request.endpoint,
            stream=request.stream,
            client_num_ctx=request.num_ctx,
            client_keep_alive=format_keep_alive(request.keep_alive),
            estimated_prompt_tokens=tokens,
            applied_num_ctx=decision.num_ctx,
            applied_keep_alive=format_keep_alive(decision.keep_alive),
            changed_by=outcome.changes,
            policy_errors=outcome.errors,
            rejected_by=outcome.rejected_by,
            dry_run=dry_run,
            warm=warm,
            memory_source=gpu.source if gpu is not None else None,
            free_bytes=gpu.free_bytes if gpu is not None else None,
            predicted_action=prediction.action if prediction is not None else None,
            predicted_evictions=prediction.evictions if prediction is not None else (),
        )

    def governs(self, model: str, endpoint: str) -> bool:
        """Whether a rule with policies governs ``model`` on ``endpoint`` right now."""
        return bool(self.governor.policies_for(model, endpoint))

    def governs_route(self, endpoint: str) -> bool:
        """Whether any rule with policies applies to ``endpoint`` right now."""
        return self.governor.governs_route(endpoint)

    async def finish(self, decided: Decided, answer: Answer) -> GovernedRequest:
        """Record Ollama's answer: learn from it, observe what it did, publish the record."""
        observed, later = self._learn(decided, answer)
        if later is not None:
            observed = await safe_await("observe", later, model=decided.record.model)
        return self.ledger.record(decided.record.finished(answer, observed))

    def finish_soon(self, decided: Decided, answer: Answer) -> None:
        """``finish`` without holding the client: only what waits for an ``/api/ps`` read after a
        load runs in the background (``drain`` waits for it at shutdown)."""
        observed, later = self._learn(decided, answer)
        if later is None:
            self.ledger.record(decided.record.finished(answer, observed))
            return
        task = asyncio.ensure_future(self._record_later(later, decided.record, answer))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _learn(
        self, decided: Decided, answer: Answer
    ) -> tuple[Observation | None, Awaitable[Observation] | None]:
        """What was observed of Ollama after the answer, or what must still be awaited to observe
        the load; (None, None) when learning failed (the record then has the answer alone)."""
        learned = safecall(
            "learn",
            self.contexts.learn,
            decided.request,
            decided.record,
            answer,
            decided.expects_load,
            decided.loaded_before,
        )
        if learned is None or isinstance(learned, Observation):
            return learned, None
        return None, learned

    async def _record_later(
        self, later: Awaitable[Observation], record: GovernedRequest, answer: Answer
    ) -> GovernedRequest:
        try:
            observed = await safe_await("observe", later, model=record.model)
        except asyncio.CancelledError:
            self.ledger.record(record.finished(answer))  # shutdown cut the observation short
            raise
        return self.ledger.record(record.finished(answer, observed))

    def abandon(self, decided: Decided, status: int, error: str) -> GovernedRequest:
        """Record a request that got no answer from Ollama to learn from (refused, or the client
        hung up: 499, Ollama's own word for it)."""
        record = decided.record._replace(status=status, completed=False, error=error)
        return self.ledger.record(record)

    def answering(self, decided: Decided) -> Answering:
        """``with`` it around relaying a decided request: if the client goes away (499, Ollama's
        own word for it) or relaying breaks (a bug of ours: 500), there is still one result; the
        exception goes on to the caller (and the error middleware)."""
        return Answering(self, decided)

    def refuse(self, decided: Decided) -> GovernedRequest:
        """Record a request a policy refused (the client gets a 400; nothing was sent)."""
        return self.ledger.record(decided.record._replace(status=400))

    async def drain(self, timeout_s: float | None = None) -> None:
        """Record every result still waiting for facts (at shutdown); past ``timeout_s`` the
        observations are cut short and each result is recorded with what it had."""
        if not self._pending:
            return
        pending = list(self._pending)
        _, late = await asyncio.wait(pending, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)


class Answering:
    """``Pipeline.answering``: a class, not ``@contextmanager`` (its generator cost more than
    what it guards)."""

    __slots__ = ("_decided", "_pipeline")

    def __init__(self, pipeline: Pipeline, decided: Decided) -> None:
        self._pipeline = pipeline
        self._decided = decided

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        if isinstance(exc, asyncio.CancelledError | ConnectionError):
            self._pipeline.abandon(self._decided, 499, "client disconnected")
        elif isinstance(exc, Exception):
            self._pipeline.abandon(
                self._decided, 500, f"internal error in ollama-governor: {type(exc).__name__}"
            )


def _warn(request: ClientRequest, outcome: ChainOutcome) -> None:
    """Outcomes where the client gets less than it asked are warnings, matched as data."""
    for change in outcome.changes:
        if change.outcome in (Outcome.OVERFLOW, Outcome.TRUNCATE):
            log.warning(
                change.outcome,
                model=request.model,
                num_ctx=outcome.decision.num_ctx,
                policy=change.policy,
                reason=change.reason,
            )
