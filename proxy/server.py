"""Running the proxy: bind, serve until SIGTERM/SIGINT, reload on SIGHUP, drain and stop cleanly.

A stop takes at most ``[limits] drain_timeout`` (20 s by default; the systemd unit allows 30 s
before SIGKILL). First the governor announces it (``[balancer] announce``, 0 by default):
readiness turns 503 and the agent answers ``drain`` while requests are still taken, so a load
balancer's next check moves new work elsewhere before anything is refused (docs/cluster.md).
Then the listener closes and idle connections are closed, streams in flight get the rest of
``drain_timeout`` minus a short tail (``proxy.app.shutdown_tail_s``) to finish, and those still
running are cut with the route's error line and recorded as 503. The tail is five equal
steps: the cut streams' grace, aiohttp's shutdown, the results still being observed, the
store's last commit, and whatever refuses to stop (``let_go``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog
from aiohttp import web

from proxy.app import create_app, make_runner, reload, shutdown_step_s, shutdown_tail_s
from proxy.balancer.agent import AgentError
from proxy.config import Config
from proxy.govern.rules import Governor
from proxy.keys import INFLIGHT
from proxy.views.auth import warn_if_exposed

log = structlog.get_logger("ollama_governor.server")

WORKER_PREFIX = "ollama-governor-worker"
"""The names of the threads that run ``threaded`` policies and store reads."""


async def serve(governor: Governor, *, load_config: Callable[[], Config] | None = None) -> None:
    """Serve until a stop signal, then drain within ``drain_timeout`` and return."""
    config = governor.config
    loop = asyncio.get_running_loop()
    workers = ThreadPoolExecutor(thread_name_prefix=WORKER_PREFIX)
    loop.set_default_executor(workers)
    app = create_app(governor, load_config=load_config)
    # aiohttp waits up to its shutdown timeout twice (for the handler, then for its task).
    runner = make_runner(app, shutdown_timeout_s=shutdown_step_s(config) / 2)
    try:
        await runner.setup()
    except AgentError:
        await runner.cleanup()
        raise
    site = web.TCPSite(runner, config.listen_host, config.listen_port, reuse_address=True)
    await site.start()
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
        agent=config.balancer.agent_listen,
        announce_s=config.balancer.announce_s,
    )
    try:
        await stop.wait()
    finally:
        started = time.monotonic()
        log.info("stopping")
        # A second TERM or INT stops at once (the default); a reload during the stop is ignored
        # (its default would end the process without committing the last results).
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        loop.add_signal_handler(
            signal.SIGHUP, functools.partial(log.info, "reload_ignored", reason="stopping")
        )
        await drain(app, runner, site, config)
        await runner.cleanup()
        log.info("stopped", took_s=round(time.monotonic() - started, 3))
        await let_go(workers, shutdown_step_s(config))


async def drain(app: web.Application, runner: web.AppRunner, site: web.BaseSite, config: Config) -> None:
    """Announce the stop, then stop listening, close idle connections, and let the relays in
    flight finish or cut them; the announcement is part of ``drain_timeout``."""
    inflight = app[INFLIGHT]
    inflight.announce()
    announce_s = config.balancer.announce_s
    if announce_s > 0:
        log.info("announcing", announce_s=announce_s, in_flight=len(inflight))
        await asyncio.sleep(announce_s)
    await site.stop()
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close; busy ones after this answer
    wait_s = config.limits.drain_timeout_s - shutdown_tail_s(config) - announce_s
    await inflight.drain(wait_s=wait_s, grace_s=shutdown_step_s(config))


async def let_go(workers: ThreadPoolExecutor, timeout_s: float) -> None:
    """End what is still running; exit the process at once if something refuses.

    ``asyncio.run`` waits, without a bound, for every task to take its cancellation and every
    worker thread to return. A policy that swallows cancellations, or a threaded one that never
    returns, would hold the stop past systemd's ``TimeoutStopSec``; after ``timeout_s`` the
    process exits without them (the results are committed by now).
    """
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in tasks:
        task.cancel()
    stuck: list[str] = []
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        stuck = sorted(task.get_name() for task in pending)
    workers.shutdown(wait=False, cancel_futures=True)  # idle threads end now; busy ones cannot
    deadline = time.monotonic() + timeout_s
    while (busy := _busy_workers()) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if stuck or busy:
        log.warning(
            "exit_without_stragglers",
            tasks=stuck,
            threads=busy,
            reason="they did not stop when asked (a policy that swallows cancellation or never returns)",
        )
        os._exit(0)


def _busy_workers() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX) and t.is_alive())
