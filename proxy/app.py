"""The composition root: every long-lived component is built here, in order, from the config.

Each component has its own ``web.AppKey`` (``proxy.keys``) and its own ``cleanup_ctx``, so it
is created at start-up and released at shutdown in reverse order: the upstream session, the
facts poller (the one reader of ``/api/ps``), the memory sampler, the HAProxy agent responder
(when ``[balancer] agent_listen`` is set; released after the drain, so the balancer reads
``drain`` until the end), the ledger, the pipeline and the warm-up, plus the loop stall monitor.
Handlers read the components from ``request.app``; nothing lives in globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence

import structlog
from aiohttp import web

from policies.context import GpuSnapshot
from proxy.balancer.agent import AgentResponder
from proxy.balancer.signals import Readiness, check_readiness
from proxy.config import Config, ConfigError, LimitsSettings
from proxy.facts.context import ContextFactory
from proxy.facts.memory import build_sampler, build_source
from proxy.facts.memory.source import MemorySource
from proxy.facts.ollama import Facts
from proxy.govern.pipeline import Pipeline
from proxy.govern.rules import Governor
from proxy.govern.stall import StallMonitor
from proxy.keys import (
    AGENT,
    CONTEXTS,
    FACTS,
    INFLIGHT,
    LEDGER,
    LIMITS,
    MEMORY,
    METRICS,
    PIPELINE,
    STALLS,
    UPSTREAM,
)
from proxy.ledger.ledger import Backend, Ledger, Sink
from proxy.ledger.memory import MemoryBackend
from proxy.ledger.store import DB_FILENAME, ResultStore
from proxy.request.compat import COMPAT_PATHS, CompatHandler
from proxy.request.guard import error_middleware
from proxy.request.handler import GOVERNED_PATHS, GovernedHandler
from proxy.upstream.client import Upstream
from proxy.upstream.inflight import InFlight
from proxy.upstream.relay import relay
from proxy.views.auth import admin_auth_middleware
from proxy.views.dashboard import dashboard_routes
from proxy.views.health import health_routes
from proxy.views.metrics import GovernorMetrics
from proxy.views.status import status_routes
from proxy.warm import warm_models

log = structlog.get_logger("ollama_governor.app")

AGENT_PROBE_TIMEOUT_S = 1.0
"""How long an agent check waits for Ollama's ``/api/version``; keep HAProxy's ``timeout check``
above it (the shipped config says 2s)."""

INVALIDATING_PATHS = frozenset({"/api/pull", "/api/create", "/api/copy", "/api/delete"})
"""Requests that can change which model a name means: model facts are re-read after them."""

RESTART_ONLY = (
    "listen_host",
    "listen_port",
    "upstream",
    "gpu",
    "ollama",
    "store",
    "state_dir",
    "limits",
    "balancer",
)
"""Config fields that shape running machinery: a reload keeps the running values."""

ConfigLoader = Callable[[], Config]
CONFIG_LOADER: web.AppKey[ConfigLoader] = web.AppKey("config_loader")


def create_app(
    governor: Governor,
    *,
    load_config: Callable[[], Config] | None = None,
    sinks: Sequence[Sink] = (),
    memory_source: MemorySource | None = None,
    backend: Backend | None = None,
) -> web.Application:
    """Build the proxy application for ``governor``.

    ``memory_source`` replaces the configured one (tests inject a fake NVML this way);
    ``backend`` replaces the results store that ``config.state_dir`` would open; ``sinks`` get
    every finished record after the ledger. ``load_config`` re-reads the config on reload.
    """
    config = governor.config
    app = web.Application(handler_args={"max_field_size": 65536})
    app.middlewares.append(error_middleware)
    app.middlewares.append(admin_auth_middleware(lambda: app[PIPELINE].governor.config.admin_token))
    app[METRICS] = GovernorMetrics()
    app[LIMITS] = config.limits
    app[INFLIGHT] = InFlight()
    if load_config is not None:
        app[CONFIG_LOADER] = load_config

    async def stall_ctx(app: web.Application) -> AsyncIterator[None]:
        monitor = app[STALLS] = StallMonitor()
        monitor.start()
        yield
        await monitor.stop()

    async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
        limits = config.limits
        upstream = app[UPSTREAM] = Upstream(
            config.upstream,
            first_byte_timeout_s=limits.first_byte_timeout_s,
            stream_idle_timeout_s=limits.stream_idle_timeout_s,
        )
        upstream.open()
        yield
        await upstream.close()

    async def facts_ctx(app: web.Application) -> AsyncIterator[None]:
        def memory() -> GpuSnapshot | None:
            return app[MEMORY].snapshot if MEMORY in app else None

        facts = app[FACTS] = Facts(app[UPSTREAM], config.ollama, gpu=memory, state_dir=config.state_dir)
        facts.start()
        yield
        await facts.stop()

    async def memory_ctx(app: web.Application) -> AsyncIterator[None]:
        facts = app[FACTS]
        source = memory_source or build_source(
            config.gpu, facts.latest_ps, hidden_bytes=facts.ps_hidden_bytes
        )
        sampler = app[MEMORY] = build_sampler(config.gpu, source)
        sampler.start()
        yield
        await sampler.stop()

    async def agent_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = config.balancer
        if settings.agent_host is None or settings.agent_port is None:
            yield
            return

        async def readiness() -> Readiness:
            return await check_readiness(app[UPSTREAM], app[INFLIGHT], timeout_s=AGENT_PROBE_TIMEOUT_S)

        sampler = app[MEMORY]
        agent = app[AGENT] = AgentResponder(
            readiness, lambda: sampler.snapshot, min_weight_pct=settings.min_weight_pct
        )
        await agent.start(settings.agent_host, settings.agent_port)
        yield
        await agent.stop()

    async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
        ledger = app[LEDGER] = Ledger(backend or _open_backend(config), [app[METRICS].observe, *sinks])
        yield
        await ledger.aclose(shutdown_step_s(config))

    async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
        sampler = app[MEMORY]
        contexts = app[CONTEXTS] = ContextFactory(app[FACTS], lambda: sampler.snapshot)
        pipeline = app[PIPELINE] = Pipeline(governor, contexts, app[LEDGER], app[STALLS].steps)
        yield
        await pipeline.drain(shutdown_step_s(config))

    async def warm_ctx(app: web.Application) -> AsyncIterator[None]:
        task = None
        if config.warm:
            task = asyncio.create_task(warm_models(app[PIPELINE], app[UPSTREAM], config.warm))
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.extend(
        [stall_ctx, upstream_ctx, facts_ctx, memory_ctx, agent_ctx, ledger_ctx, pipeline_ctx, warm_ctx]
    )

    async def governed(request: web.Request) -> web.StreamResponse:
        app = request.app
        return await GovernedHandler(app[PIPELINE], app[UPSTREAM], app[INFLIGHT])(request)

    async def translated(request: web.Request) -> web.StreamResponse:
        app = request.app
        return await CompatHandler(app[PIPELINE], app[UPSTREAM], app[FACTS], app[INFLIGHT])(request)

    async def passthrough(request: web.Request) -> web.StreamResponse:
        body = request.content if request.body_exists else None
        app = request.app
        relayed = await relay(
            request,
            app[UPSTREAM],
            body=body,
            inflight=app[INFLIGHT],
            body_timeout_s=app[LIMITS].body_timeout_s,
        )
        if request.path in INVALIDATING_PATHS and relayed.status < 400:
            request.app[FACTS].invalidate()
        return relayed.response

    app.router.add_routes([*status_routes(), *dashboard_routes(), *health_routes()])
    for path in GOVERNED_PATHS:
        app.router.add_post(path, governed)
    for path in COMPAT_PATHS:
        app.router.add_post(path, translated)
    app.router.add_route("*", "/{tail:.*}", passthrough)
    return app


def _open_backend(config: Config) -> Backend:
    """The results store in ``config.state_dir``, or the memory ledger without one."""
    settings = config.store
    if config.state_dir is None or not settings.enabled:
        return MemoryBackend()
    return ResultStore(
        config.state_dir / DB_FILENAME,
        flush_interval_s=settings.flush_interval_s,
        retention_days=settings.retention_days,
        max_rows=settings.max_rows,
    )


def reload(app: web.Application) -> bool:
    """Re-read the config file and policies; keep the old ones if anything is wrong.

    The loader re-applies the command line's overrides, so ``--upstream`` survives. Settings
    that shape running machinery (``listen``, ``upstream``, ``[gpu]``, ``[ollama]``,
    ``[store]``, ``state_dir``, ``[limits]``, ``[balancer]``) take effect at the next restart;
    rules and policies now.
    """
    load_config = app.get(CONFIG_LOADER)
    if load_config is None:
        log.warning("reload_unsupported", reason="this governor was not started from a config")
        return False
    pipeline = app[PIPELINE]
    try:
        config = load_config()
        new = Governor.build(config)
    except ConfigError as exc:
        log.error("reload_failed", error=str(exc), action="kept the previous configuration")
        return False
    old = pipeline.governor.config
    deferred = [
        name
        for name, before, after in (
            ("listen", old.listen, config.listen),
            ("upstream", old.upstream, config.upstream),
            ("[gpu]", old.gpu, config.gpu),
            ("[ollama]", old.ollama, config.ollama),
            ("[store]", old.store, config.store),
            ("state_dir", old.state_dir, config.state_dir),
            ("[limits]", old.limits, config.limits),
            ("[balancer]", old.balancer, config.balancer),
        )
        if before != after
    ]
    if deferred:
        log.warning("reload_deferred", settings=deferred, action="restart to apply them")
    # Keep what applies at restart as it is, so status and requests describe what really runs.
    running = {name: getattr(old, name) for name in RESTART_ONLY}
    kept = Governor(dataclasses.replace(config, **running), new.rules)
    pipeline.governor = kept
    log.info("reloaded", source=config.source, rules=len(new.rules), upstream=kept.config.upstream)
    return True


SHUTDOWN_TAIL_S = 3.0
"""Of ``drain_timeout``, what is kept for the steps after the drain (the runner's shutdown, the
last results, the store's commit), so the whole stop stays within it."""


def shutdown_tail_s(config: Config) -> float:
    """The part of ``drain_timeout`` kept for what comes after the drain."""
    return min(SHUTDOWN_TAIL_S, config.limits.drain_timeout_s / 2)


def shutdown_step_s(config: Config) -> float:
    """How long each of the five steps after the drain may take: the cut streams' grace,
    aiohttp's shutdown, the results still being observed, the store's commit, and the tasks and
    threads that are left."""
    return shutdown_tail_s(config) / 5


def make_runner(app: web.Application, *, shutdown_timeout_s: float = 15.0) -> web.AppRunner:
    """The runner ``serve`` and the tests share: handlers are cancelled when the client goes
    away, which closes the upstream request so Ollama stops generating.

    aiohttp's own keep-alive timer is the header timeout (``[limits] header_timeout``): it closes
    a connection that has not sent a complete request head that long after it opened or after
    its last response, so an idle or trickling (slowloris) connection cannot stay open.

    Request bodies are not decompressed: a ``Content-Encoding: gzip`` body reaches Ollama as the
    client sent it, with its header (Ollama does not decompress either, and answers it itself).
    """
    limits = app.get(LIMITS)
    header_timeout_s = limits.header_timeout_s if limits is not None else LimitsSettings().header_timeout_s
    return web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=header_timeout_s,
        auto_decompress=False,
    )
