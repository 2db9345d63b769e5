"""The relays in flight and the drain: who is cut, when, and what the flag says."""

from __future__ import annotations

import asyncio

from proxy.upstream.inflight import SHUTTING_DOWN, InFlight


class TestInFlight:
    async def test_draining_is_raised_at_once_and_idle_drains_end_at_once(self) -> None:
        """With nothing in flight the drain returns without waiting; the flag stays up."""
        inflight = InFlight()
        assert not inflight.draining
        outcome = await inflight.drain(wait_s=30.0, grace_s=30.0)
        assert inflight.draining
        assert (outcome.finished, outcome.cut, outcome.left) == (0, 0, 0)

    async def test_a_relay_that_ends_in_time_is_not_cut(self) -> None:
        """A relay that finishes during the wait is counted as finished."""
        inflight = InFlight()
        release = asyncio.Event()

        async def relay() -> str | None:
            with inflight.track() as flight:
                await release.wait()
                return flight.cut_reason

        task = asyncio.create_task(relay())
        await asyncio.sleep(0)
        drain = asyncio.create_task(inflight.drain(wait_s=30.0, grace_s=1.0))
        await asyncio.sleep(0)
        release.set()
        outcome = await drain
        assert await task is None
        assert (outcome.finished, outcome.cut, outcome.left) == (1, 0, 0)

    async def test_a_relay_waiting_for_ollama_is_cancelled_with_a_reason(self) -> None:
        """Past the wait, a relay still waiting for headers is cancelled and knows why."""
        inflight = InFlight()

        async def relay() -> str | None:
            with inflight.track() as flight:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    return flight.cut_reason
            return None

        task = asyncio.create_task(relay())
        await asyncio.sleep(0)
        outcome = await inflight.drain(wait_s=0.0, grace_s=5.0)
        assert await task == SHUTTING_DOWN
        assert (outcome.cut, outcome.left) == (1, 0)

    async def test_a_relay_started_after_the_cut_is_born_cut(self) -> None:
        """Once the drain cuts, a new relay is cut before it asks Ollama anything."""
        inflight = InFlight()
        await inflight.drain(wait_s=0.0, grace_s=0.0)
        with inflight.track() as flight:
            assert flight.cut_reason == SHUTTING_DOWN
