"""The governor's own decision cost per request, measured in-process, without any I/O.

Three slices of a governed request's path through ``proxy.govern.pipeline``, each timed alone
after a warm-up:

- ``chain``: ``run_chain`` with the benchmark's policies (``headroom``, ``keep_alive``) on a
  Context built from real facts (the fake upstream's ``/api/show``, ``/api/ps``, ``/api/tags``
  read through the governor's own ``Facts`` and GPU source);
- ``decision``: ``Pipeline.decide``, what happens before the request goes upstream: parse the
  body, build the Context, run the chain, rewrite the body, start the record;
- ``record``: ``Pipeline.finish_soon``, what happens after the answer: read the final object's
  figures, learn and observe, and publish the record (the ``result`` log line as JSON,
  Prometheus metrics, the memory ledger; the SQLite store is left out: its writes run on a
  thread).
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
from proxy.config import load_config
from proxy.facts.context import ContextFactory
from proxy.facts.memory import build_sampler, build_source
from proxy.facts.ollama import Facts
from proxy.govern.chain import run_chain
from proxy.govern.pipeline import Pipeline
from proxy.govern.record import Answer
from proxy.govern.rules import Governor
from proxy.ledger.ledger import Ledger
from proxy.ledger.memory import MemoryBackend
from proxy.logs import configure_logging
from proxy.request.parse import parse_request
from proxy.upstream.client import Upstream
from proxy.upstream.tap import FinalObjectTap
from proxy.views.metrics import GovernorMetrics


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
    link = Upstream(upstream_url)
    link.open()
    facts = Facts(link, config.ollama)
    gpu = build_sampler(config.gpu, build_source(config.gpu, facts.latest_ps))
    facts.gpu = lambda: gpu.snapshot
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed in finally
    try:
        await facts.refresh_loaded()
        await gpu.refresh()
        if await facts.model_facts(payloads.MODEL, 5.0) is None:
            raise RuntimeError("the governor's facts could not be read from the fake upstream")
        contexts = ContextFactory(facts, lambda: gpu.snapshot)
        raw = payloads.chat_request(stream=False)
        parsed = parse_request("chat", raw)
        assert parsed is not None
        policies = governor.policies_for(parsed.model, parsed.endpoint)
        timeout_s = config.policy_timeout_s
        start = Decision(num_ctx=parsed.num_ctx, keep_alive=parsed.keep_alive)
        ctx = await contexts.build(parsed)
        metrics = GovernorMetrics()
        pipeline = Pipeline(governor, contexts, Ledger(MemoryBackend(), [metrics.observe]))

        async def chain() -> Any:
            return await run_chain(policies, ctx, start, timeout_s)

        async def decision() -> Any:
            request = parse_request("chat", raw)
            assert request is not None
            return await pipeline.decide(request)

        outcome = await chain()
        decided = await decision()
        configure_logging("json", "info", devnull, cache=False)  # render and write every line, keep none

        async def record() -> None:
            tap = FinalObjectTap()
            tap.feed(payloads.CHAT_REPLY)
            pipeline.finish_soon(decided, Answer.of(200, tap.final_object(), ttfb_ms=1.0))

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
        await gpu.stop()
        await facts.stop()
        await link.close()
