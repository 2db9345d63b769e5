"""Running the proxy: bind, serve until SIGTERM/SIGINT, reload on SIGHUP, drain and stop cleanly.

A stop takes at most ``[limits] drain_timeout`` (20 s by default; the systemd unit allows 30 s
before SIGKILL): the listener closes at once and idle connections are closed, streams in flight
get ``drain_timeout`` minus a short tail (``proxy.app.shutdown_tail_s``) to finish, and those
still running are cut with the route's error line and recorded as 503. The tail is four equal
steps: the cut streams' grace, aiohttp's shutdown, the results still being observed, and the
store's last commit.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import structlog
from aiohttp import web

from proxy.app import create_app, make_runner, reload, shutdown_step_s, shutdown_tail_s
from proxy.config import Config
from proxy.govern.rules import Governor
from proxy.keys import INFLIGHT
from proxy.views.auth import warn_if_exposed

log = structlog.get_logger("ollama_governor.server")


async def serve(governor: Governor, *, load_config: Callable[[], Config] | None = None) -> None:
    """Serve until a stop signal, then drain within ``drain_timeout`` and return."""
    config = governor.config
    app = create_app(governor, load_config=load_config)
    # aiohttp waits up to its shutdown timeout twice (for the handler, then for its task).
    runner = make_runner(app, shutdown_timeout_s=shutdown_step_s(config) / 2)
    await runner.setup()
    site = web.TCPSite(runner, config.listen_host, config.listen_port, reuse_address=True)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, app)
    warn_if_exposed(config.listen_host, config.admin_token, log)
    log.info(
        "listening",
        listen=config.listen,
        upstream=config.upstream,
        rules=len(governor.rules),
        dry_run=config.dry_run,
        config=config.source,
        drain_timeout_s=config.limits.drain_timeout_s,
    )
    try:
        await stop.wait()
    finally:
        started = time.monotonic()
        log.info("stopping")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await drain(app, runner, site, config)
        await runner.cleanup()
        log.info("stopped", took_s=round(time.monotonic() - started, 3))


async def drain(app: web.Application, runner: web.AppRunner, site: web.BaseSite, config: Config) -> None:
    """Stop listening, close idle connections, and let the relays in flight finish or cut them."""
    await site.stop()
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close; busy ones after this answer
    wait_s = config.limits.drain_timeout_s - shutdown_tail_s(config)
    await app[INFLIGHT].drain(wait_s=wait_s, grace_s=shutdown_step_s(config))
