"""The HAProxy agent-check responder: a small TCP listener that answers one line and closes.

HAProxy connects every ``agent-inter``, reads a line up to ``\\n`` and applies it (docs/cluster.md):
``up ready 60%`` while ready, ``drain`` while the governor stops or Ollama does not answer. Each
connection asks Ollama afresh (concurrent checks share one question), so a dead Ollama drains
the node at the balancer's next check. Whatever the peer sends (``agent-send``) is never read, so
no byte of it can reach a log; off by default (``[balancer] agent_listen``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from policies.context import GpuSnapshot
from proxy.balancer.signals import Readiness, Weight, agent_answer

log = structlog.get_logger("ollama_governor.balancer")

WRITE_TIMEOUT_S = 2.0
"""A peer that does not take a 20-byte line in this long is dropped."""


class AgentError(Exception):
    """The agent cannot listen where the config says; the message says where and why."""


class AgentResponder:
    """Answers HAProxy's agent checks from the governor's readiness and the host's headroom."""

    def __init__(
        self,
        readiness: Callable[[], Coroutine[Any, Any, Readiness]],
        memory: Callable[[], GpuSnapshot | None],
        *,
        min_weight_pct: int,
    ) -> None:
        self._readiness = readiness
        self._memory = memory
        self._weight = Weight(min_weight_pct)
        self._asking: asyncio.Task[Readiness] | None = None
        self._server: asyncio.Server | None = None
        self._was_ready: bool | None = None
        self.answered = 0
        """Checks answered since start."""

    @property
    def port(self) -> int | None:
        """The port it listens on (the one the OS chose for port 0), or None before ``start``."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def answer(self) -> str:
        """The line for a check arriving now (Ollama is asked once for concurrent checks)."""
        if self._asking is None or self._asking.done():
            self._asking = asyncio.create_task(self._readiness(), name="ollama-governor agent readiness")
        readiness = await asyncio.shield(self._asking)
        self._note(readiness)
        return agent_answer(readiness, self._weight(self._memory()))

    def _note(self, readiness: Readiness) -> None:
        """Log when the answer turns from ready to drain or back (once per change)."""
        if readiness.ready == self._was_ready:
            return
        self._was_ready = readiness.ready
        if readiness.ready:
            log.info("agent_ready", version=readiness.ollama_version)
        else:
            reason = "draining" if readiness.draining else "ollama unreachable"
            log.warning("agent_drain", reason=reason, error=readiness.error)

    async def _handle(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await self.answer()
            writer.write(line.encode("ascii"))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            self.answered += 1
        except (ConnectionError, TimeoutError):
            pass  # the balancer went away; its next check asks again
        finally:
            writer.close()

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``; AgentError when the address cannot be had."""
        try:
            self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            reason = exc.strerror or str(exc)
            raise AgentError(
                f"[balancer] agent_listen {where}: cannot listen: {reason}; pick a free port or leave "
                "agent_listen out"
            ) from None
        log.info("agent_listening", agent=f"{host}:{self.port}")

    async def stop(self) -> None:
        """Stop listening (last, after the drain: the balancer reads ``drain`` until the end)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), WRITE_TIMEOUT_S)
        if self._asking is not None and not self._asking.done():
            self._asking.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._asking
