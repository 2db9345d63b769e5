"""Preload models with the governor's own decision, so the first real request skips the load.

Ollama treats a generate call with an empty prompt as a preload that honours ``num_ctx`` and
``keep_alive``; the decision comes from the same rules and policies as a real request.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiohttp import web

from policies.decision import Decision
from policies.duration import format_keep_alive
from proxy.chain import ChainOutcome, run_chain
from proxy.contexts import ContextFactory
from proxy.governor import Governor
from proxy.intercept import parse_governed
from proxy.results import DoneMetrics, Results
from proxy.upstream import Upstream

log = structlog.get_logger("ollama_governor.warm")

WARM_TIMEOUT_S = 900.0
"""A cold load of a big model on a slow disk takes minutes."""
FACTS_WAIT_S = 60.0


def preload_body(model: str, decision: Decision) -> dict[str, Any]:
    """Ollama's preload call: empty prompt, with the decided num_ctx and keep_alive."""
    body: dict[str, Any] = {"model": model, "prompt": "", "stream": False}
    if decision.keep_alive is not None:
        body["keep_alive"] = decision.keep_alive
    if decision.num_ctx is not None:
        body["options"] = {"num_ctx": decision.num_ctx}
    return body


async def decide_warm(governor: Governor, contexts: ContextFactory, model: str) -> ChainOutcome:
    """The decision a request for ``model`` with an empty prompt would get."""
    parsed = parse_governed("generate", json.dumps({"model": model, "prompt": ""}).encode())
    assert parsed is not None
    start = Decision()
    policies = governor.policies_for(model)
    if not policies:
        return ChainOutcome(start)
    ctx = await contexts.build(parsed, None, facts_wait_s=FACTS_WAIT_S)
    return await run_chain(policies, ctx, start, governor.config.policy_timeout_s)


async def warm_models(
    governor: Governor,
    upstream: Callable[[], Upstream],
    contexts: ContextFactory,
    results: Results | None,
    models: Sequence[str],
) -> list[dict[str, Any]]:
    """Preload each model in turn; a failure is logged and the next model is tried."""
    done = []
    for model in models:
        started = time.time()
        try:
            outcome = await decide_warm(governor, contexts, model)
            if outcome.decision.rejected:
                log.warning("warm_rejected", model=model, reason=outcome.decision.rejection)
                continue
            answer = await upstream().post_json(
                "/api/generate", preload_body(model, outcome.decision), timeout_s=WARM_TIMEOUT_S
            )
        except Exception as exc:
            log.error("warm_failed", model=model, error=f"{type(exc).__name__}: {exc}")
            continue
        metrics = DoneMetrics.from_final(answer if isinstance(answer, dict) else None)
        event: dict[str, Any] = {
            "ts": round(started, 3),
            "model": model,
            "endpoint": "generate",
            "warm": True,
            "client_num_ctx": None,
            "applied_num_ctx": outcome.decision.num_ctx,
            "client_keep_alive": None,
            "applied_keep_alive": format_keep_alive(outcome.decision.keep_alive),
            "changed_by": [effect.as_dict() for effect in outcome.effects],
            "status": 200,
            "done_reason": metrics.done_reason if metrics else None,
            "load_ms": round((time.time() - started) * 1000, 3),
            "dry_run": False,
        }
        log.info(
            "warmed",
            model=model,
            num_ctx=event["applied_num_ctx"],
            keep_alive=event["applied_keep_alive"],
            load_ms=event["load_ms"],
        )
        await contexts.facts.refresh_loaded_soon()
        if results is not None:
            results.record(event)
        done.append(event)
    return done


async def warm_once(governor: Governor, models: Sequence[str]) -> int:
    """``ollama-governor warm``: gather facts like ``serve`` would, preload, report; 1 on failure."""
    from proxy.app import STATE, create_app  # the app imports this module for start-up warming

    app = create_app(Governor(dataclasses.replace(governor.config, warm=()), governor.rules))
    runner = web.AppRunner(app)
    await runner.setup()  # runs the app's start-up (session, GPU sampler, facts) without listening
    try:
        state = app[STATE]
        await state.gpu.refresh()
        await state.facts.refresh_loaded()
        done = await warm_models(governor, state.upstream, state.contexts, None, models)
    finally:
        await runner.cleanup()
    for event in done:
        print(
            f"{event['model']}: loaded with num_ctx {event['applied_num_ctx'] or 'default'}, "
            f"keep_alive {event['applied_keep_alive'] or 'default'} in {event['load_ms'] / 1000:.1f} s"
        )
    return 0 if len(done) == len(models) else 1
