"""Running the proxy: bind, serve until SIGTERM/SIGINT, reload on SIGHUP, shut down cleanly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog
from aiohttp import web

from proxy.app import create_app, make_runner, reload
from proxy.config import Config
from proxy.govern.rules import Governor
from proxy.views.auth import warn_if_exposed

log = structlog.get_logger("ollama_governor.server")


async def serve(governor: Governor, *, load_config: Callable[[], Config] | None = None) -> None:
    """Serve until a stop signal; in-flight streams get the shutdown timeout to finish."""
    config = governor.config
    app = create_app(governor, load_config=load_config)
    runner = make_runner(app)
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
    )
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("stopped")
