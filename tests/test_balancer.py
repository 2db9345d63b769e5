"""The signals a load balancer reads, unit by unit: ``[balancer]``, the weight, the agent's line,
the agent responder, the probes, ``/governor/loaded``, and the announced stop of a served governor.

The cluster as a whole, behind a real HAProxy, is tests/test_cluster.py.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from policies.context import GpuDevice, GpuSnapshot
from policies.memory import GIB
from proxy.app import reload
from proxy.balancer.agent import AgentError, AgentResponder
from proxy.balancer.signals import UNKNOWN_WEIGHT_PCT, Readiness, Weight, agent_answer, headroom_pct
from proxy.cli import describe
from proxy.config import BalancerSettings, ConfigError, parse_config
from proxy.govern.rules import Governor
from proxy.keys import AGENT, INFLIGHT, PIPELINE
from tests.conftest import PASS_THROUGH, StartFake, StartProxy, free_port
from tests.faultkit import address, served_governor

READY = Readiness(draining=False, ollama_version="0.33.0-rc2")


def snapshot(free_gib: float, total_gib: float = 100.0, *, reserve_gib: float = 0.0) -> GpuSnapshot:
    """One device with ``free_gib`` of ``total_gib`` free."""
    free, total = int(free_gib * GIB), int(total_gib * GIB)
    device = GpuDevice(index=0, name="gpu", total_bytes=total, free_bytes=free, used_bytes=total - free)
    return GpuSnapshot(source="nvml", devices=(device,), reserve_bytes=int(reserve_gib * GIB))


async def agent_line(port: int, send: bytes = b"") -> bytes:
    """What the agent on ``port`` answers one connection (``send`` is written first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if send:
            writer.write(send)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()


class TestBalancerSection:
    """``[balancer]``: off by default, typed, one message per mistake."""

    def test_defaults_are_off(self) -> None:
        """Without the section no agent listens, nothing is announced and the floor is 50%."""
        assert parse_config({}).balancer == BalancerSettings()
        assert BalancerSettings().agent_listen is None
        assert (BalancerSettings().announce_s, BalancerSettings().min_weight_pct) == (0.0, 50)

    def test_every_key(self) -> None:
        """Each key is read into its typed field."""
        data = {"balancer": {"agent_listen": "[::1]:11437", "announce": "2s", "min_weight": 25}}
        settings = parse_config(data).balancer
        assert (settings.agent_host, settings.agent_port, settings.agent_listen) == (
            "::1",
            11437,
            "[::1]:11437",
        )
        assert (settings.announce_s, settings.min_weight_pct) == (2.0, 25)

    @pytest.mark.parametrize(
        ("section", "expected"),
        [
            (
                {"agent_listen": "11437"},
                "<defaults>: balancer.agent_listen: expected host:port such as \"127.0.0.1:11436\", got '11437'",
            ),
            (
                {"agent_listen": ":11437"},
                'balancer.agent_listen: name the address too, e.g. "127.0.0.1:11437" (or "0.0.0.0:11437" '
                "for every one)",
            ),
            ({"agent_listen": "127.0.0.1:70000"}, "balancer.agent_listen: port 70000 is out of range"),
            ({"agent_listen": 11437}, "balancer.agent_listen: expected a string, got an integer"),
            ({"min_weight": 0}, "balancer.min_weight: expected a percentage from 1 to 100, got 0"),
            ({"min_weight": "10%"}, "balancer.min_weight: expected an integer, got a string"),
            ({"announce": "soon"}, "balancer.announce: "),
            ({"agent": "x"}, "<defaults>: unknown key 'agent' in [balancer]"),
        ],
    )
    def test_each_mistake_has_one_message(self, section: dict[str, object], expected: str) -> None:
        """A bad value names the key and what to write instead."""
        with pytest.raises(ConfigError) as raised:
            parse_config({"balancer": section})
        assert expected in str(raised.value)

    def test_announce_must_fit_in_the_drain(self) -> None:
        """The announcement is part of drain_timeout, so it must be shorter."""
        with pytest.raises(ConfigError) as raised:
            parse_config({"balancer": {"announce": "5s"}, "limits": {"drain_timeout": "5s"}})
        assert str(raised.value) == (
            "<defaults>: balancer.announce: must be shorter than [limits] drain_timeout (5s): "
            "the announcement is part of the drain"
        )

    def test_check_prints_the_section(self) -> None:
        """``check`` says where the agent listens and how long a stop is announced."""
        off = describe(Governor.build(parse_config({"rules": []})))
        on = describe(
            Governor.build(
                parse_config({"rules": [], "balancer": {"agent_listen": "0.0.0.0:11437", "announce": 2}})
            )
        )
        assert "balancer: agent off, announce off" in off.splitlines()
        assert "balancer: agent 0.0.0.0:11437, announce 2s, min weight 50%" in on.splitlines()


class TestHeadroom:
    """The headroom the weight is made of: free less the reserve, over the total."""

    def test_reserve_is_not_headroom(self) -> None:
        """60 GiB free of 100 with a 10 GiB reserve is 50%."""
        assert headroom_pct(snapshot(60, reserve_gib=10)) == pytest.approx(50.0)

    def test_unknown_memory_has_no_headroom_figure(self) -> None:
        """No snapshot, or one with no device read, is unknown, not zero."""
        assert headroom_pct(None) is None
        assert headroom_pct(GpuSnapshot(source="none", error="no source")) is None

    def test_a_reserve_above_free_is_zero(self) -> None:
        """Less free than the reserve is no headroom at all."""
        assert headroom_pct(snapshot(1, reserve_gib=2)) == 0.0


class TestWeight:
    """The agent's weight: steps of ten, a floor, and a step of hysteresis."""

    @pytest.mark.parametrize(
        ("free_gib", "expected"), [(100, 100), (84, 80), (86, 90), (30, 30), (3, 10), (0, 10)]
    )
    def test_nearest_step_above_the_floor(self, free_gib: float, expected: int) -> None:
        """A fresh weight is the headroom to the nearest 10%, at least the floor."""
        assert Weight(min_pct=10)(snapshot(free_gib)) == expected

    def test_unknown_memory_keeps_the_configured_weight(self) -> None:
        """Without a memory figure the agent answers 100%: the balancer's own weight."""
        assert Weight(min_pct=10)(GpuSnapshot(source="none")) == UNKNOWN_WEIGHT_PCT == 100

    def test_small_swings_keep_the_weight(self) -> None:
        """Within one step of the last weight it stays; a step further it moves."""
        weight = Weight(min_pct=10)
        assert weight(snapshot(50)) == 50
        assert [weight(snapshot(free)) for free in (54, 56, 41, 59)] == [50, 50, 50, 50]
        assert weight(snapshot(61)) == 60
        assert weight(snapshot(49)) == 50

    def test_floor_is_configurable(self) -> None:
        """A full host answers the floor it was given."""
        assert Weight(min_pct=25)(snapshot(2)) == 25


class TestAgentAnswer:
    """The line HAProxy reads."""

    def test_ready_sets_state_and_weight(self) -> None:
        """Ready: up, ready (ends a drain it announced) and the weight."""
        assert agent_answer(READY, 40) == "up ready 40%\n"

    def test_draining_or_unreachable_drains(self) -> None:
        """Stopping, or Ollama not answering, is a drain."""
        assert agent_answer(Readiness(draining=True), 40) == "drain\n"
        assert agent_answer(Readiness(draining=False, error="ClientConnectorError: refused"), 40) == "drain\n"


class TestAgentResponder:
    """The TCP listener: one line per connection, concurrent checks share one question."""

    async def test_answers_one_line_and_closes(self) -> None:
        """A check gets the current line; bytes it sends (agent-send) are ignored, never read."""
        agent = AgentResponder(self._ready, lambda: snapshot(70), min_weight_pct=10)
        await agent.start("127.0.0.1", 0)
        assert agent.port is not None
        try:
            assert await agent_line(agent.port) == b"up ready 70%\n"
            assert await agent_line(agent.port, send=b"backend governors secret\n") == b"up ready 70%\n"
            assert agent.answered == 2
        finally:
            await agent.stop()

    async def test_concurrent_checks_ask_once(self) -> None:
        """Checks arriving together share one readiness question."""
        asked = 0
        release = asyncio.Event()

        async def readiness() -> Readiness:
            nonlocal asked
            asked += 1
            await release.wait()
            return READY

        agent = AgentResponder(readiness, lambda: None, min_weight_pct=10)
        answers = [asyncio.create_task(agent.answer()) for _ in range(3)]
        await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(*answers) == ["up ready 100%\n"] * 3
        assert asked == 1

    async def test_logs_each_change_once(self) -> None:
        """ready -> drain -> ready is three log lines, however many checks ask."""
        states = [READY, READY, Readiness(draining=False, error="refused"), Readiness(draining=True), READY]

        async def readiness() -> Readiness:
            return states.pop(0)

        agent = AgentResponder(readiness, lambda: None, min_weight_pct=10)
        with capture_logs() as logs:
            for _ in range(5):
                await agent.answer()
        assert [(e["event"], e.get("reason")) for e in logs] == [
            ("agent_ready", None),
            ("agent_drain", "ollama unreachable"),
            ("agent_ready", None),
        ]

    async def test_a_taken_port_is_one_error(self) -> None:
        """An address in use refuses the start with the key and the fix."""
        holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = holder.sockets[0].getsockname()[1]
        agent = AgentResponder(self._ready, lambda: None, min_weight_pct=10)
        try:
            with pytest.raises(AgentError) as raised:
                await agent.start("127.0.0.1", port)
            assert str(raised.value).startswith(f"[balancer] agent_listen 127.0.0.1:{port}: cannot listen: ")
            assert str(raised.value).endswith("; pick a free port or leave agent_listen out")
        finally:
            holder.close()

    @staticmethod
    async def _ready() -> Readiness:
        return READY


def balancer_config(agent_port: int, **extra: str) -> str:
    lines = "".join(f'{key} = "{value}"\n' for key, value in extra.items())
    return f'{PASS_THROUGH}[balancer]\nagent_listen = "127.0.0.1:{agent_port}"\n{lines}'


class TestProbes:
    """``/governor/health`` is readiness, ``/governor/health/live`` liveness, both open."""

    async def test_readiness_is_503_while_draining(
        self, start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """From the stop signal on, readiness says draining (Ollama is not asked), liveness still 200."""
        fake = await start_fake()
        proxy = await start_proxy(fake.url)  # type: ignore[attr-defined]
        proxy.app[INFLIGHT].announce()
        async with http.get(proxy.url + "/governor/health") as response:
            assert response.status == 503
            assert await response.json() == {"status": "draining", "upstream": fake.url, "draining": True}  # type: ignore[attr-defined]
        async with http.get(proxy.url + "/governor/health/live") as response:
            assert response.status == 200
            assert await response.json() == {"status": "alive", "draining": True}

    async def test_liveness_does_not_ask_ollama(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """With Ollama gone, readiness is 503 and liveness 200."""
        proxy = await start_proxy(f"http://127.0.0.1:{free_port()}")
        async with http.get(proxy.url + "/governor/health") as response:
            assert response.status == 503
        async with http.get(proxy.url + "/governor/health/live") as response:
            assert response.status == 200
            assert await response.json() == {"status": "alive", "draining": False}

    async def test_probes_need_no_token(
        self, start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """With an admin token the probes stay open and /governor/loaded does not."""
        fake = await start_fake()
        proxy = await start_proxy(fake.url, 'admin_token = "s3cret"\n' + PASS_THROUGH)  # type: ignore[attr-defined]
        for path, status in (
            ("/governor/health", 200),
            ("/governor/health/live", 200),
            ("/governor/loaded", 401),
        ):
            async with http.get(proxy.url + path) as response:
                assert response.status == status, path


class TestLoaded:
    """``/governor/loaded``: what is loaded at which context, cheap to poll."""

    async def test_models_and_contexts_with_an_etag(
        self, start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """After a load it lists the model and its context; the same state answers 304 to its ETag,
        a new state a new ETag."""
        fake = await start_fake(version="0.33.0-rc2")
        proxy = await start_proxy(fake.url)  # type: ignore[attr-defined]
        async with http.post(
            proxy.url + "/api/generate", json={"model": "gemma3-270m", "prompt": "hi", "stream": False}
        ) as response:
            assert response.status == 200
        facts = proxy.app[PIPELINE].contexts.facts
        await facts.refresh_loaded()
        async with http.get(proxy.url + "/governor/loaded") as response:
            assert response.status == 200
            body = await response.json()
            etag = response.headers["ETag"]
        assert etag.startswith('W/"')
        assert [(m["name"], m["context_length"], m["loading"]) for m in body["loaded"]] == [
            ("gemma3-270m:latest", 4096, False)
        ]
        assert body["draining"] is False and body["loaded_error"] is None and body["read_ts"] > 0
        await facts.refresh_loaded()
        async with http.get(proxy.url + "/governor/loaded", headers={"If-None-Match": etag}) as response:
            assert response.status == 304
        proxy.app[INFLIGHT].announce()
        async with http.get(proxy.url + "/governor/loaded", headers={"If-None-Match": etag}) as response:
            assert response.status == 200
            assert response.headers["ETag"] != etag


class TestReload:
    """``[balancer]`` applies at restart, like ``[limits]``."""

    async def test_a_reload_keeps_the_running_section(
        self, start_fake: StartFake, start_proxy: StartProxy, tmp_path: Path
    ) -> None:
        """A changed [balancer] is logged as deferred and the running one stays."""
        fake = await start_fake()
        agent_port = free_port()
        proxy = await start_proxy(fake.url, balancer_config(agent_port))  # type: ignore[attr-defined]
        assert proxy.app[AGENT].port == agent_port
        (tmp_path / "config0.toml").write_text(balancer_config(free_port(), announce="1s"))
        with capture_logs() as logs:
            assert reload(proxy.app)
        [deferred] = [e for e in logs if e["event"] == "reload_deferred"]
        assert "[balancer]" in deferred["settings"]
        assert proxy.app[PIPELINE].governor.config.balancer.agent_port == agent_port


class TestAnnouncedStop:
    """SIGTERM on a served governor: readiness and the agent say so while it still serves."""

    @pytest.mark.timeout(60)
    async def test_announce_then_close(self, start_fake: StartFake, tmp_path: Path) -> None:
        """With no memory source the agent answers 100%; during the announcement a new connection
        is served (readiness 503, the agent ``drain``); after it the listener is closed while the
        agent still answers ``drain``, and the stream in flight finishes."""
        fake = await start_fake(version="0.33.0-rc2", num_parallel=4)
        fake.hold = asyncio.Event()
        agent_port = free_port()
        config = balancer_config(agent_port, announce="1500ms") + '[gpu]\nsource = "none"\n'
        async with served_governor(config, fake.url, tmp_path) as governor, aiohttp.ClientSession() as http:  # type: ignore[attr-defined]
            assert await agent_line(agent_port) == b"up ready 100%\n"
            stream = await http.post(
                governor.url + "/api/generate", json={"model": "gemma3-270m", "prompt": "hi"}
            )
            await asyncio.wait_for(stream.content.readline(), 10)
            governor.process.send_signal(signal.SIGTERM)
            await governor.wait_for("announcing")
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.get(governor.url + "/governor/health") as response,
            ):
                assert response.status == 503
                assert (await response.json())["status"] == "draining"
            assert await agent_line(agent_port) == b"drain\n"
            await governor.wait_for("draining")
            with pytest.raises(OSError):
                await asyncio.open_connection(*address(governor.url))
            assert await agent_line(agent_port) == b"drain\n"
            fake.hold.set()
            assert b'"done":true' in (await stream.read()).replace(b" ", b"")
            assert await governor.finished() == 0
        [announcing] = governor.events("announcing")
        assert announcing["announce_s"] == 1.5 and announcing["in_flight"] == 1
        assert governor.events("drained")[0]["cut"] == 0
