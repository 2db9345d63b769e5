"""The governor's own decision cost per request, measured in-process, without any I/O.

Three nested slices of ``Interceptor.handle``, each timed alone after a warm-up:

- ``chain``: ``run_chain`` with the benchmark's policies (``headroom``, ``keep_alive``) on a
  Context built from real facts (the fake upstream's ``/api/show``, ``/api/ps``, ``/api/tags``
  read through the governor's own ``Facts`` and GPU source);
- ``decision``: what happens before the request goes upstream: parse the body, build the
  Context, run the chain, rewrite the body, start the result event;
- ``record``: what happens after the answer: read the final object's metrics, annotate the
  result and publish it (the ``result`` log line as JSON, Prometheus metrics, the recent list;
  the SQLite store is left out: its writes run on a thread).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import payloads
from bench.stats import summarize_ns
from policies.decision import Decision
from proxy.chain import run_chain
from proxy.config import load_config
from proxy.contexts import ContextFactory
from proxy.facts import Facts
from proxy.governor import Governor
from proxy.gpu import build_sampler
from proxy.intercept import Interceptor, _add_metrics, parse_governed, rewrite_body
from proxy.live import RecentDecisions
from proxy.logs import configure_logging
from proxy.metrics import GovernorMetrics
from proxy.results import DoneMetrics, Results
from proxy.sections import gpu_settings, ollama_settings
from proxy.tap import FinalObjectTap
from proxy.upstream import Upstream, new_session


async def _time(step: Callable[[], Awaitable[Any]], iterations: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        await step()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        started = clock()
        await step()
        samples.append(clock() - started)
    return summarize_ns(samples)


async def measure(config_path: Path, upstream_url: str, iterations: int) -> dict[str, Any]:
    """µs per request of the chain, the decision path and result recording."""
    config = dataclasses.replace(load_config(config_path), upstream=upstream_url, state_dir=None)
    governor = Governor.build(config)
    session = new_session()
    link = Upstream(upstream_url, session)
    gpu = build_sampler(gpu_settings(config.extra), lambda: link)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed in finally
    try:
        await gpu.refresh()
        facts = Facts(lambda: link, ollama_settings(config.extra), gpu=lambda: gpu.snapshot)
        await facts.refresh_loaded()
        if await facts.model_facts(payloads.MODEL, 5.0) is None:
            raise RuntimeError("the governor's facts could not be read from the fake upstream")
        contexts = ContextFactory(facts, lambda: gpu.snapshot)
        raw = payloads.chat_request(stream=False)
        parsed = parse_governed("chat", raw)
        assert parsed is not None
        policies = governor.policies_for(parsed.model)
        timeout_s = config.policy_timeout_s
        start = Decision(num_ctx=parsed.client_num_ctx, keep_alive=parsed.client_keep_alive)
        ctx = await contexts.build(parsed, None)

        async def chain() -> Any:
            return await run_chain(policies, ctx, start, timeout_s)

        async def decision() -> Any:
            request = parse_governed("chat", raw)
            assert request is not None
            context = await contexts.build(request, None)
            first = Decision(num_ctx=request.client_num_ctx, keep_alive=request.client_keep_alive)
            outcome = await run_chain(policies, context, first, timeout_s)
            body = rewrite_body(request, outcome.decision)
            return body, Interceptor._event(time.time(), request, outcome, False)

        outcome = await chain()
        _body, event_template = await decision()
        configure_logging("json", "info", devnull, cache=False)  # render and write every line, keep none
        metrics, recent = GovernorMetrics(), RecentDecisions()
        results = Results([metrics.observe_result, recent.add])

        async def record() -> None:
            tap = FinalObjectTap()
            tap.feed(payloads.CHAT_REPLY)
            event = dict(event_template, status=200, ttfb_ms=1.0, completed=True)
            _add_metrics(event, DoneMetrics.from_final(tap.final_object()))
            contexts.after_response(parsed, event)
            results.record(event)

        return {
            "policies": [policy.name for policy in policies],
            "reasons": list(outcome.decision.reasons),
            "applied": {"num_ctx": outcome.decision.num_ctx, "keep_alive": outcome.decision.keep_alive},
            "chain": await _time(chain, iterations, iterations // 10),
            "decision": await _time(decision, iterations, iterations // 10),
            "record": await _time(record, iterations, iterations // 10),
        }
    finally:
        devnull.close()
        await gpu.source.close()
        await session.close()
