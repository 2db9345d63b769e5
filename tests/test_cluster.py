"""A real HAProxy running the shipped systemd/haproxy.cfg in front of two governors, each in front
of its own fake Ollama, each host with its own free memory (a ``/proc/meminfo`` of its own).

What a cluster needs from the governor and the shipped config: a model's requests keep reaching
one node, the agents' weights follow each host's free memory, a dead Ollama drains its node and
a revived one brings it back, and SIGTERM on a governor during streams loses none of them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from policies.memory import GIB
from proxy.request.compat import COMPAT_PATHS
from proxy.request.handler import GOVERNED_PATHS
from tests.conftest import Running, StartProxy, client_requests, eventually, free_port, start_app
from tests.fake_ollama import FakeOllama, gemma3_270m
from tests.faultkit import Governor, served_governor
from tests.haproxykit import SHIPPED, Haproxy, Node, running_haproxy, state_of

MODELS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")
"""Six names (one small GGUF): with two nodes, some land on each."""
TOTAL_BYTES = 64 * GIB
CHECKS_S = 15.0
"""Long enough for any HAProxy check to run a few times (agent 1 s, health 2 s x rise/fall 2)."""


def meminfo(available_bytes: int, total_bytes: int = TOTAL_BYTES) -> str:
    """A ``/proc/meminfo`` with the two lines the ``system`` memory source reads."""
    return f"MemTotal: {total_bytes // 1024} kB\nMemAvailable: {available_bytes // 1024} kB\n"


def node_config(meminfo_path: Path, agent_port: int, *, announce: str = "0s") -> str:
    """A governor of one node: no rules, system memory from its own file, the agent on (weights
    down to 10%, so they show the free memory)."""
    return (
        "rules = []\n"
        f'[gpu]\nsource = "system"\nmeminfo_path = "{meminfo_path}"\nreserve = 0\ninterval = "100ms"\n'
        f'[balancer]\nagent_listen = "127.0.0.1:{agent_port}"\nannounce = "{announce}"\nmin_weight = 10\n'
    )


def fake_ollama(**options: object) -> FakeOllama:
    return FakeOllama(version="0.33.0-rc2", models=[gemma3_270m(name) for name in MODELS], **options)  # type: ignore[arg-type]


def reached(fake: FakeOllama, model: str) -> int:
    """How many client requests for ``model`` reached ``fake``."""
    return sum(
        1
        for r in client_requests(fake)
        if r.method == "POST" and json.loads(r.body or b"{}").get("model") == model
    )


@dataclass
class InProcessNode:
    """A fake Ollama and the governor in front of it, both in this process."""

    node: Node
    fake: FakeOllama
    fake_server: Running
    governor: Running
    meminfo_path: Path


@asynccontextmanager
async def in_process_nodes(
    start_proxy: StartProxy, workdir: Path, free_fractions: tuple[float, ...]
) -> AsyncIterator[list[InProcessNode]]:
    """One node per free-memory fraction; the fakes are stopped afterwards."""
    nodes: list[InProcessNode] = []
    try:
        for index, fraction in enumerate(free_fractions, 1):
            fake = fake_ollama()
            fake_server = await start_app(fake.app)
            path = workdir / f"meminfo{index}"
            path.write_text(meminfo(int(TOTAL_BYTES * fraction)))
            agent_port = free_port()
            governor = await start_proxy(fake_server.url, node_config(path, agent_port))
            port = int(governor.url.rsplit(":", 1)[1])
            nodes.append(
                InProcessNode(Node(f"node{index}", port, agent_port), fake, fake_server, governor, path)
            )
        yield nodes
    finally:
        for node in nodes:
            await node.fake_server.runner.cleanup()


@asynccontextmanager
async def cluster(
    start_proxy: StartProxy, workdir: Path, free_fractions: tuple[float, ...]
) -> AsyncIterator[tuple[list[InProcessNode], Haproxy]]:
    """In-process nodes and the shipped HAProxy in front of them."""
    async with (
        in_process_nodes(start_proxy, workdir, free_fractions) as nodes,
        running_haproxy([n.node for n in nodes], workdir) as haproxy,
    ):
        yield nodes, haproxy


async def serving(haproxy: Haproxy, *names: str, weights: dict[str, int] | None = None) -> None:
    """Wait until HAProxy has every named server UP (and at the given weights)."""

    async def check() -> bool:
        servers = await haproxy.servers()
        ok = all(state_of(servers[name]) == "UP" for name in names)
        return ok and all(servers[name]["weight"] == str(weight) for name, weight in (weights or {}).items())

    await poll(check, what=f"{names} UP with weights {weights}")


async def poll(check: object, *, what: str, timeout_s: float = CHECKS_S) -> None:
    """``eventually`` for an async check (HAProxy's state is read through its socket)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def generate(http: aiohttp.ClientSession, url: str, model: str, **extra: object) -> int:
    body = {"model": model, "prompt": "hi", "stream": False, **extra}
    async with http.post(url + "/api/generate", json=body) as response:
        await response.read()
        return response.status


def home_of(nodes: list[InProcessNode], model: str) -> InProcessNode:
    """The node whose Ollama got every request for ``model`` so far (there must be one)."""
    homes = [node for node in nodes if reached(node.fake, model)]
    assert len(homes) == 1, f"{model} reached {[node.node.name for node in homes]}"
    return homes[0]


class TestShippedConfig:
    """systemd/haproxy.cfg hashes the routes the governor governs (every test here runs it)."""

    def test_the_routes_that_load_a_model_are_the_governors(self) -> None:
        """The config hashes exactly the routes that load a model: GOVERNED_PATHS and COMPAT_PATHS."""
        lines = [line.split() for line in SHIPPED.read_text().splitlines()]
        paths = {word for words in lines if words[:3] == ["acl", "loads_model", "path"] for word in words[3:]}
        assert paths == set(GOVERNED_PATHS) | set(COMPAT_PATHS)


class TestAffinity:
    """Requests that name a model keep reaching one node; the rest go anywhere."""

    async def test_each_model_stays_on_one_node(
        self, start_proxy: StartProxy, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Every request for a model reaches the same Ollama, however its name is written and
        wherever in a long body it stands, and the models are spread over both nodes."""
        async with cluster(start_proxy, tmp_path, (0.5, 0.5)) as (nodes, haproxy):
            await serving(haproxy, "node1", "node2", weights={"node1": 50, "node2": 50})
            for model in MODELS:
                for _ in range(4):
                    assert await generate(http, haproxy.url, model) == 200
            homes = {model: home_of(nodes, model) for model in MODELS}
            assert {home.node.name for home in homes.values()} == {"node1", "node2"}
            model = MODELS[0]
            before = reached(homes[model].fake, model)
            # "model" after 100 KB of messages, as OpenAI clients write it; and the name with
            # its tag and in capitals, as Ollama reads the same model.
            long_chat = json.dumps({"messages": [{"role": "user", "content": "x" * 100_000}], "model": model})
            async with http.post(haproxy.url + "/api/chat", data=long_chat) as response:
                assert response.status == 200
            assert await generate(http, haproxy.url, f"{model.upper()}:latest") in (200, 404)
            assert reached(homes[model].fake, model) == before + 1
            other = next(node for node in nodes if node is not homes[model])
            assert not any(
                json.loads(r.body or b"{}").get("model", "").lower().startswith(model)
                for r in client_requests(other.fake)
                if r.method == "POST"
            )

    async def test_requests_without_a_model_go_to_every_node(
        self, start_proxy: StartProxy, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """/api/tags and /api/ps are balanced over both nodes."""
        async with cluster(start_proxy, tmp_path, (0.5, 0.5)) as (nodes, haproxy):
            await serving(haproxy, "node1", "node2", weights={"node1": 50, "node2": 50})
            for path in ("/api/tags", "/api/ps") * 4:
                async with http.get(haproxy.url + path) as response:
                    assert response.status == 200
            for node in nodes:
                assert {"/api/tags", "/api/ps"} & {r.path for r in client_requests(node.fake)}


class TestAgentWeights:
    """HAProxy's weight for each node follows its host's free memory, as the agent reports it."""

    async def test_weights_follow_free_memory(self, start_proxy: StartProxy, tmp_path: Path) -> None:
        """80% and 30% free become weights 80 and 30; node2 at 62% free becomes 60."""
        async with cluster(start_proxy, tmp_path, (0.8, 0.3)) as (nodes, haproxy):
            await serving(haproxy, "node1", "node2", weights={"node1": 80, "node2": 30})
            nodes[1].meminfo_path.write_text(meminfo(int(TOTAL_BYTES * 0.62)))
            await serving(haproxy, "node1", "node2", weights={"node1": 80, "node2": 60})


class TestOllamaDown:
    """A node whose Ollama dies is drained at the next agent check and comes back with it."""

    async def test_dead_ollama_drains_its_node_and_returns(
        self, start_proxy: StartProxy, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """While clients keep asking for node1's model, node1's Ollama dies: every request sent
        after HAProxy shows node1 drained succeeds on node2; one sent to node1 before that waits
        out the governor's retry window and gets its 502. When Ollama is back the node is ready
        again and the model goes home."""
        async with cluster(start_proxy, tmp_path, (0.5, 0.5)) as (nodes, haproxy):
            await serving(haproxy, "node1", "node2", weights={"node1": 50, "node2": 50})
            for model in MODELS:
                assert await generate(http, haproxy.url, model) == 200
            node1, node2 = nodes
            model = next(m for m in MODELS if home_of(nodes, m) is node1)
            sent: list[tuple[float, asyncio.Task[int]]] = []
            stop = asyncio.Event()

            async def clients() -> None:
                """A new request every 20 ms, each on its own, so a slow one holds up none."""
                while not stop.is_set():
                    sent.append((time.monotonic(), asyncio.create_task(generate(http, haproxy.url, model))))
                    await asyncio.sleep(0.02)

            load = asyncio.create_task(clients())
            await eventually(lambda: len(sent) >= 3, what="requests before the kill")
            fake_port = int(node1.fake_server.url.rsplit(":", 1)[1])
            await node1.fake_server.runner.cleanup()

            async def drained() -> bool:
                return state_of((await haproxy.servers())["node1"]) in ("DRAIN", "DOWN")

            await poll(drained, what="node1 drained")
            seen = time.monotonic()
            await eventually(lambda: sum(1 for t, _ in sent if t > seen) >= 10, what="requests after")
            stop.set()
            await load
            statuses = [(t, await task) for t, task in sent]
            after = [status for t, status in statuses if t > seen]
            assert after and set(after) == {200}
            assert {status for _, status in statuses} <= {200, 502}
            assert reached(node2.fake, model) >= len(after)
            async with http.get(node1.governor.url + "/governor/health") as response:
                assert response.status == 503
                assert (await response.json())["status"] == "unavailable"

            revived = fake_ollama()
            node1.fake_server = await start_app(revived.app, fake_port)
            await serving(haproxy, "node1", weights={"node1": 50})
            assert await generate(http, haproxy.url, model) == 200
            assert reached(revived, model) == 1


@dataclass
class ServedNode:
    """A fake Ollama in this process and a served governor process in front of it."""

    node: Node
    fake: FakeOllama
    governor: Governor


class TestSigtermDrain:
    """SIGTERM on one governor while streams run: they all finish, and no client request fails."""

    @pytest.mark.timeout(90)
    async def test_streams_finish_and_new_requests_move_to_the_other_node(
        self, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """node1 announces its stop (agent drain) for 2 s while it still serves, HAProxy moves
        the model to node2, node1's streams finish after the close and it exits 0 with none cut;
        a client asking all along for node1's model never gets an error."""
        async with AsyncExitStack() as stack:
            nodes: list[ServedNode] = []
            for index in (1, 2):
                fake = fake_ollama(num_parallel=16)
                fake_server = await start_app(fake.app)
                stack.push_async_callback(fake_server.runner.cleanup)
                workdir = tmp_path / f"node{index}"
                workdir.mkdir()
                (workdir / "meminfo").write_text(meminfo(TOTAL_BYTES // 2))
                agent_port = free_port()
                config = node_config(workdir / "meminfo", agent_port, announce="2s")
                config += '[limits]\ndrain_timeout = "15s"\n'
                governor = await stack.enter_async_context(served_governor(config, fake_server.url, workdir))
                port = int(governor.url.rsplit(":", 1)[1])
                nodes.append(ServedNode(Node(f"node{index}", port, agent_port), fake, governor))
            haproxy = await stack.enter_async_context(running_haproxy([n.node for n in nodes], tmp_path))
            await serving(haproxy, "node1", "node2", weights={"node1": 50, "node2": 50})
            for model in MODELS:
                assert await generate(http, haproxy.url, model) == 200
            node1, node2 = nodes
            model = next(m for m in MODELS if reached(node1.fake, m))
            node1.fake.hold = asyncio.Event()
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            streams = [await http.post(haproxy.url + "/api/chat", json=body) for _ in range(4)]
            for response in streams:
                assert response.status == 200
                await asyncio.wait_for(response.content.readline(), 10)
            statuses: list[int] = []
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    statuses.append(await generate(http, haproxy.url, model))

            load = asyncio.create_task(client())
            node1.governor.process.send_signal(signal.SIGTERM)
            await node1.governor.wait_for("announcing")

            async def drained() -> bool:
                return state_of((await haproxy.servers())["node1"]) in ("DRAIN", "DOWN")

            await poll(drained, what="node1 drained")
            await node1.governor.wait_for("draining")
            on_node2 = reached(node2.fake, model)
            await eventually(
                lambda: reached(node2.fake, model) >= on_node2 + 5, what="node2 serving the model"
            )
            node1.fake.hold.set()
            tails = [await asyncio.wait_for(response.read(), 15) for response in streams]
            assert await node1.governor.finished() == 0
            stop.set()
            await load
            for tail in tails:
                last = json.loads(tail.splitlines()[-1])
                assert last["done"] is True and "error" not in last
            assert statuses and set(statuses) == {200}
            assert node1.governor.events("drained")[0]["cut"] == 0
