"""Shared fixtures: a fake Ollama and the governor in front of it, both real servers on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
from aiohttp import web

from proxy.app import create_app, make_runner
from proxy.config import Config, load_config
from proxy.govern.rules import Governor
from proxy.keys import PIPELINE
from proxy.upstream.client import OWN_USER_AGENT
from tests.fake_ollama import FakeOllama, Recorded

ROOT_DIR = Path(__file__).resolve().parent.parent
PASS_THROUGH = "rules = []\n"
"""A config that governs nothing (without ``rules`` the built-in default rule governs every model)."""
"""The repository root, where ``python -m proxy`` runs from in subprocess tests."""


@dataclass
class Running:
    """A server started by a fixture: its URL and what it runs."""

    url: str
    app: web.Application
    runner: web.AppRunner


async def start_app(app: web.Application, port: int = 0) -> Running:
    """Start ``app`` on 127.0.0.1 with the production runner settings."""
    runner = make_runner(app, shutdown_timeout_s=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound = runner.addresses[0][:2]
    return Running(f"http://{host}:{bound}", app, runner)


def free_port() -> int:
    """A loopback port nothing listens on (yet)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


StartFake = Callable[..., Awaitable[FakeOllama]]
StartProxy = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_fake() -> AsyncIterator[StartFake]:
    """Start fake Ollamas with the given options; each gets a ``url`` attribute."""
    running: list[Running] = []

    async def start(port: int = 0, *, middlewares: Sequence[Any] = (), **options: Any) -> FakeOllama:
        fake = FakeOllama(**options)
        fake.app.middlewares.extend(middlewares)  # e.g. an endpoint made to fail
        server = await start_app(fake.app, port)
        fake.url = server.url  # type: ignore[attr-defined]
        running.append(server)
        return fake

    yield start
    for server in running:
        await server.runner.cleanup()


@pytest.fixture
async def fake(start_fake: StartFake) -> FakeOllama:
    """A CPU-only fake Ollama serving the small gemma3-270m model."""
    return await start_fake()


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start the governor in front of ``upstream`` with a TOML config text (or a Config); by
    default a pass-through (``PASS_THROUGH``)."""
    running: list[Running] = []

    async def start(upstream: str, config: str | Config = PASS_THROUGH, **create_options: Any) -> Running:
        if isinstance(config, str):
            path = tmp_path / f"config{len(running)}.toml"
            path.write_text(textwrap.dedent(config))

            def reload() -> Config:
                return dataclasses.replace(load_config(path), upstream=upstream)

        else:
            fixed = dataclasses.replace(config, upstream=upstream)

            def reload() -> Config:
                return fixed

        app = create_app(Governor.build(reload()), load_config=reload, **create_options)
        server = await start_app(app)
        running.append(server)
        return server

    yield start
    for server in running:
        await server.runner.cleanup()


@pytest.fixture
async def proxy(fake: FakeOllama, start_proxy: StartProxy) -> Running:
    """The governor with no rules in front of ``fake``: a pure pass-through."""
    return await start_proxy(fake.url)  # type: ignore[attr-defined]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client that leaves bytes alone, for byte-level comparisons."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def client_requests(fake: FakeOllama) -> list[Recorded]:
    """What clients sent through the proxy, leaving out the governor's own fact-gathering."""
    return [r for r in fake.requests if r.headers.get("User-Agent") != OWN_USER_AGENT]


async def settled(server: Running) -> None:
    """Wait until every finished request's result has been recorded (some wait for /api/ps)."""
    await server.app[PIPELINE].drain()


async def eventually(
    check: Callable[[], object], *, timeout_s: float = 5.0, what: str = "the condition"
) -> None:
    """Wait until ``check()`` is true, polling the event loop; fail with ``what`` after ``timeout_s``.

    For things that happen in the background with no event to wait on (a poller's next read, a
    subprocess writing its log); use an event or ``settled`` where there is one.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


OllamaClients = Callable[[str], ollama.AsyncClient]


@pytest.fixture
async def ollama_client() -> AsyncIterator[OllamaClients]:
    """Official async ollama clients for a host, closed after the test."""
    clients: list[ollama.AsyncClient] = []

    def make(host: str) -> ollama.AsyncClient:
        client = ollama.AsyncClient(host=host)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
