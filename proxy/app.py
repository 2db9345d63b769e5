"""The aiohttp application: admin routes, the two governed endpoints, and everything else
passed through. State lives on the app (``web.AppKey``), never in module globals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web

from proxy.admin import admin_routes
from proxy.config import Config, ConfigError
from proxy.forward import relay
from proxy.governor import Governor
from proxy.intercept import GOVERNED_PATHS, ContextBuilder, Interceptor, basic_context
from proxy.results import Results, Sink
from proxy.upstream import Upstream, new_session

log = structlog.get_logger("ollama_governor.app")


@dataclass
class AppState:
    """The mutable heart of a running governor: the current governor and the upstream link."""

    governor: Governor
    results: Results
    session: aiohttp.ClientSession | None = None
    upstream_link: Upstream | None = None
    load_config: Callable[[], Config] | None = None

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
        self.install(new)
        log.info("reloaded", source=config.source, rules=len(new.rules), upstream=config.upstream)
        return True


STATE = web.AppKey("state", AppState)


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.session = new_session()
    state.install(state.governor)
    yield
    await state.session.close()


def create_app(
    governor: Governor,
    *,
    load_config: Callable[[], Config] | None = None,
    sinks: list[Sink] | None = None,
    build_context: ContextBuilder = basic_context,
    extra_routes: list[web.RouteDef] | None = None,
) -> web.Application:
    """Build the proxy application for ``governor``."""
    state = AppState(governor=governor, results=Results(sinks), load_config=load_config)
    app = web.Application(handler_args={"max_field_size": 65536})
    app[STATE] = state
    app.cleanup_ctx.append(_client_session)
    interceptor = Interceptor(state.upstream, state.current, state.results, build_context)

    async def passthrough(request: web.Request) -> web.StreamResponse:
        body = request.content if request.body_exists else None
        return (await relay(request, state.upstream(), body=body)).response

    app.router.add_routes(extra_routes or [])
    app.router.add_routes(admin_routes(state.upstream))
    for path in GOVERNED_PATHS:
        app.router.add_post(path, interceptor.handle)
    app.router.add_route("*", "/{tail:.*}", passthrough)
    return app


def make_runner(app: web.Application, *, shutdown_timeout_s: float = 15.0) -> web.AppRunner:
    """The runner ``serve`` and the tests share: handlers are cancelled when the client goes
    away, which closes the upstream request so Ollama stops generating."""
    return web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout_s
    )

