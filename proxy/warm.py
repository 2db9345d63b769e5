"""Preload models with the governor's own decision, so the first real request skips the load.

Ollama treats a generate call with an empty prompt as a preload that honours ``num_ctx`` and
``keep_alive``; the decision comes from the same pipeline as a real request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import structlog

from proxy.facts.context import ContextFactory
from proxy.facts.memory import build_sampler, build_source
from proxy.facts.ollama import Facts
from proxy.govern.boundary import describe
from proxy.govern.pipeline import Decided, Pipeline
from proxy.govern.record import Answer, GovernedRequest
from proxy.govern.rules import Governor
from proxy.ledger.ledger import Ledger
from proxy.ledger.memory import MemoryBackend
from proxy.request.parse import parse_request
from proxy.upstream.client import Upstream

log = structlog.get_logger("ollama_governor.warm")

WARM_TIMEOUT_S = 900.0
"""A cold load of a big model on a slow disk takes minutes."""
FACTS_WAIT_S = 60.0


def preload_body(decided: Decided) -> Any:
    """Ollama's preload call (empty prompt) as the pipeline decided to send it."""
    return decided.request.body if decided.body is None else json.loads(decided.body)


async def warm_models(pipeline: Pipeline, upstream: Upstream, models: Sequence[str]) -> list[GovernedRequest]:
    """Preload each model in turn; a failure is logged and the next model is tried."""
    done = []
    for model in models:
        started = time.time()
        request = parse_request(
            "generate", json.dumps({"model": model, "prompt": "", "stream": False}).encode()
        )
        assert request is not None
        try:
            decided = await pipeline.decide(request, warm=True, facts_wait_s=FACTS_WAIT_S)
            if decided.rejection is not None:
                log.warning("warm_rejected", model=model, reason=decided.rejection)
                continue
            answer = await upstream.post_json(
                "/api/generate", preload_body(decided), timeout_s=WARM_TIMEOUT_S
            )
        except Exception as exc:
            log.error("warm_failed", model=model, error=describe(exc))
            continue
        final = answer if isinstance(answer, dict) else None
        done_reason = final.get("done_reason") if final else None
        load_ms = round((time.time() - started) * 1000, 3)
        record = await pipeline.finish(
            decided,
            Answer(
                status=200, done_reason=done_reason if isinstance(done_reason, str) else None, load_ms=load_ms
            ),
        )
        log.info(
            "warmed",
            model=model,
            num_ctx=record.applied_num_ctx,
            keep_alive=record.applied_keep_alive,
            load_ms=record.load_ms,
        )
        done.append(record)
    return done


async def warm_once(governor: Governor, models: Sequence[str]) -> int:
    """``ollama-governor warm``: gather facts as ``serve`` would, preload, report; 1 on failure."""
    config = governor.config
    upstream = Upstream(config.upstream)
    upstream.open()
    facts = Facts(upstream, config.ollama, state_dir=config.state_dir)
    sampler = build_sampler(config.gpu, build_source(config.gpu, facts.latest_ps))
    facts.gpu = lambda: sampler.snapshot
    try:
        await facts.refresh_loaded()
        await sampler.refresh()
        pipeline = Pipeline(
            governor, ContextFactory(facts, lambda: sampler.snapshot), Ledger(MemoryBackend())
        )
        done = await warm_models(pipeline, upstream, models)
    finally:
        await sampler.stop()
        await facts.stop()
        await upstream.close()
    for record in done:
        load_s = (record.load_ms or 0.0) / 1000
        print(
            f"{record.model}: loaded with num_ctx {record.applied_num_ctx or 'default'}, "
            f"keep_alive {record.applied_keep_alive or 'default'} in {load_s:.1f} s"
        )
    return 0 if len(done) == len(models) else 1
