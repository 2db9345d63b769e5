"""The aiohttp application: admin routes, the two governed endpoints, and everything else
passed through. State lives on the app (``web.AppKey``), never in module globals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from policies.context import LoadedModel
from proxy.admin import admin_routes
from proxy.config import Config, ConfigError
from proxy.contexts import ContextFactory
from proxy.facts import Facts
from proxy.forward import relay
from proxy.governor import Governor
from proxy.gpu import GpuSampler, GpuSource, build_sampler
from proxy.intercept import GOVERNED_PATHS, Interceptor
from proxy.live import LiveSources, RecentDecisions, admin_auth_middleware, live_routes, summarise_config
from proxy.metrics import GovernorMetrics
from proxy.results import Results, Sink
from proxy.sections import gpu_settings, ollama_settings, store_settings
from proxy.store import DB_FILENAME, ResultStore
from proxy.upstream import Upstream, new_session
from proxy.warm import warm_models

log = structlog.get_logger("ollama_governor.app")

INVALIDATING_PATHS = frozenset({"/api/pull", "/api/create", "/api/copy", "/api/delete"})
"""Requests that can change which model a name means: model facts are re-read after them."""


@dataclass
class AppState:
    """The mutable heart of a running governor: the current governor and what serves it."""

    governor: Governor
    results: Results
    gpu: GpuSampler
    facts: Facts
    contexts: ContextFactory
    store: ResultStore | None = None
    session: aiohttp.ClientSession | None = None
    upstream_link: Upstream | None = None
    load_config: Callable[[], Config] | None = None
    metrics: GovernorMetrics | None = None
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    def upstream(self) -> Upstream:
        """The upstream for the current config (only valid while the app runs)."""
        if self.upstream_link is None:
            raise RuntimeError("the application is not running")
        return self.upstream_link

    def current(self) -> Governor:
        """The governor new requests are decided by."""
        return self.governor

    def install(self, governor: Governor) -> None:
        """Make ``governor`` current; in-flight requests keep the one they started with."""
        self.governor = governor
        if self.session is not None and (
            self.upstream_link is None or self.upstream_link.base_url != governor.config.upstream
        ):
            self.upstream_link = Upstream(governor.config.upstream, self.session)

    def reload(self) -> bool:
        """Re-read the config file and policies; keep the old ones if anything is wrong.

        ``load_config`` re-applies the command line's overrides, so ``--upstream`` survives.
        Sections that shape running machinery (``[gpu]``, ``[ollama]``, ``[store]``,
        ``listen``) take effect at the next restart; rules and policies take effect now.
        """
        if self.load_config is None:
            log.warning("reload_unsupported", reason="this governor was not started from a config")
            return False
        try:
            config = self.load_config()
            new = Governor.build(config)
        except ConfigError as exc:
            log.error("reload_failed", error=str(exc), action="kept the previous configuration")
            return False
        old = self.governor.config
        if (new.config.listen_host, new.config.listen_port) != (old.listen_host, old.listen_port):
            log.warning("reload_listen_ignored", listen=new.config.listen, action="restart to change it")
        if dict(new.config.extra) != dict(old.extra):
            log.warning("reload_sections_deferred", action="[gpu], [ollama] and [store] apply at restart")
        self.install(new)
        log.info("reloaded", source=config.source, rules=len(new.rules), upstream=config.upstream)
        return True

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run background work owned by the app; it is cancelled at shutdown."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


STATE = web.AppKey("state", AppState)
INTERCEPTOR = web.AppKey("interceptor", Interceptor)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.session = new_session()
    state.install(state.governor)
    state.gpu.start()
    state.facts.start()
    governor = state.governor
    if governor.config.warm:
        warm = warm_models(governor, state.upstream, state.contexts, state.results, governor.config.warm)
        state.spawn(warm)
    yield
    for task in list(state.background):
        task.cancel()
    await app[INTERCEPTOR].drain()
    await state.facts.stop()
    await state.gpu.stop()
    if state.store is not None:
        await state.store.aclose()
    await state.session.close()


def create_app(
    governor: Governor,
    *,
    load_config: Callable[[], Config] | None = None,
    sinks: list[Sink] | None = None,
    extra_routes: list[web.RouteDef] | None = None,
    gpu_source: GpuSource | None = None,
) -> web.Application:
    """Build the proxy application for ``governor``.

    ``gpu_source`` replaces the configured one (tests inject a fake NVML this way). The results
    store lives in ``config.state_dir``; without one, results are only logged.
    """
    config = governor.config
    holder: list[AppState] = []

    def upstream() -> Upstream:
        return holder[0].upstream()

    settings = gpu_settings(config.extra)
    gpu = build_sampler(settings, upstream)
    if gpu_source is not None:
        gpu = GpuSampler(gpu_source, interval_s=settings.interval_s, reserve_bytes=settings.reserve_bytes)
    facts = Facts(
        upstream, ollama_settings(config.extra), gpu=lambda: gpu.snapshot, state_dir=config.state_dir
    )
    store = _open_store(config)
    metrics, recent = GovernorMetrics(), RecentDecisions()
    all_sinks: list[Sink] = [store.add] if store is not None else []
    all_sinks += [metrics.observe_result, recent.add, *(sinks or [])]
    state = AppState(
        governor=governor,
        results=Results(all_sinks),
        gpu=gpu,
        facts=facts,
        contexts=ContextFactory(facts, lambda: gpu.snapshot),
        store=store,
        load_config=load_config,
        metrics=metrics,
    )
    holder.append(state)
    if store is not None:
        for model, (num_ctx, keep_alive) in store.last_applied().items():
            state.results.changes.seed(model, num_ctx, keep_alive)
    interceptor = Interceptor(
        state.upstream,
        state.current,
        state.results,
        state.contexts.build,
        state.contexts.after_response,
        state.contexts.on_forward,
    )
    def admin_token() -> str | None:
        return state.current().config.admin_token  # read per request: a reload can rotate it

    async def loaded_models() -> tuple[LoadedModel, ...]:
        return state.facts.loaded

    live = LiveSources(
        config_summary=lambda: summarise_config(state.current().config),
        loaded_models=loaded_models,
        store=lambda: state.store,
        gpu=lambda: state.gpu.snapshot,
        metrics=metrics,
        recent=recent,
    )
    app = web.Application(
        middlewares=[admin_auth_middleware(admin_token)], handler_args={"max_field_size": 65536}
    )
    app[STATE] = state
    app[INTERCEPTOR] = interceptor
    app.cleanup_ctx.append(_lifecycle)

    async def passthrough(request: web.Request) -> web.StreamResponse:
        body = request.content if request.body_exists else None
        relayed = await relay(request, state.upstream(), body=body)
        if request.path in INVALIDATING_PATHS and relayed.status < 400:
            state.facts.invalidate()
        return relayed.response

    app.router.add_routes(extra_routes or [])
    app.router.add_routes(live_routes(live, admin_token=admin_token))
    app.router.add_routes(admin_routes(state.upstream))
    for path in GOVERNED_PATHS:
        app.router.add_post(path, interceptor.handle)
    app.router.add_route("*", "/{tail:.*}", passthrough)
    return app


def _open_store(config: Config) -> ResultStore | None:
    settings = store_settings(config.extra)
    if config.state_dir is None or not settings.enabled:
        return None
    return ResultStore(
        config.state_dir / DB_FILENAME,
        flush_interval_s=settings.flush_interval_s,
        retention_days=settings.retention_days,
        max_rows=settings.max_rows,
    )


def make_runner(app: web.Application, *, shutdown_timeout_s: float = 15.0) -> web.AppRunner:
    """The runner ``serve`` and the tests share: handlers are cancelled when the client goes
    away, which closes the upstream request so Ollama stops generating."""
    return web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout_s)
