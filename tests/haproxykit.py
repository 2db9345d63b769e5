"""A real HAProxy for the cluster tests: the shipped systemd/haproxy.cfg with only its addresses
changed, run in the foreground, and read through its admin socket (``show stat``).

HAProxy must be installed (``.ci/run`` installs Debian's package); a missing binary fails the
tests that need it, loudly, rather than skipping them.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT_DIR, free_port

SHIPPED = ROOT_DIR / "systemd" / "haproxy.cfg"
BACKEND = "governors"


@dataclass(frozen=True, slots=True)
class Node:
    """One server line: the governor's port and its agent's."""

    name: str
    port: int
    agent_port: int


def haproxy_binary() -> str:
    """The haproxy executable; AssertionError when it is not installed."""
    found = shutil.which("haproxy") or next(
        (path for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(path).exists()), None
    )
    assert found, "haproxy is not installed: .ci/run installs Debian's package (apt-get install haproxy)"
    return found


def _replace(text: str, pattern: str, replacement: str, *, count: int = 1) -> str:
    new, found = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert found == count, (
        f"systemd/haproxy.cfg: expected {count} line(s) matching {pattern!r}, found {found}"
    )
    return new


def localized(text: str, *, port: int, nodes: Sequence[Node], socket_path: Path) -> str:
    """The shipped config with loopback addresses: the bind, the servers (each with its own
    agent port, as two governors on one host need) and the admin socket; nothing else changes.
    There is no syslog socket in a test machine: the logs go to stderr (``haproxy.log``)."""
    text = _replace(text, r"^    log /dev/log local0 notice$", "    log stderr format raw local0 notice")
    text = _replace(text, r"^    stats socket \S+", f"    stats socket {socket_path}")
    text = _replace(text, r"^    bind :11434$", f"    bind 127.0.0.1:{port}")
    servers = "".join(
        f"    server {node.name} 127.0.0.1:{node.port} agent-port {node.agent_port}\n" for node in nodes
    )
    return _replace(text, r"(?:^    server \S+ \S+\n)+", servers)


@dataclass
class Haproxy:
    """A running HAProxy: its URL and its admin socket."""

    url: str
    socket_path: Path
    process: asyncio.subprocess.Process

    async def command(self, line: str) -> str:
        """One admin-socket command's answer."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.read(), 5.0)).decode()
        finally:
            writer.close()

    async def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` for the governors' backend: per server, its status (UP, DOWN, DRAIN...),
        weight, check and agent results."""
        answer = await self.command("show stat")
        rows = csv.DictReader(io.StringIO(answer.lstrip("# ")))
        return {
            row["svname"]: row
            for row in rows
            if row.get("pxname") == BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND")
        }


@asynccontextmanager
async def running_haproxy(nodes: Sequence[Node], workdir: Path) -> AsyncIterator[Haproxy]:
    """HAProxy with the shipped config in front of ``nodes``, stopped afterwards."""
    binary = haproxy_binary()
    port = free_port()
    socket_path = workdir / "haproxy.sock"
    config = workdir / "haproxy.cfg"
    config.write_text(localized(SHIPPED.read_text(), port=port, nodes=nodes, socket_path=socket_path))
    check = await asyncio.create_subprocess_exec(
        binary, "-c", "-q", "-f", str(config), stderr=asyncio.subprocess.PIPE
    )
    _, errors = await check.communicate()
    assert check.returncode == 0, errors.decode()
    with (workdir / "haproxy.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary, "-db", "-f", str(config), stdout=asyncio.subprocess.DEVNULL, stderr=log
        )
    try:
        deadline = asyncio.get_running_loop().time() + 10.0
        while not socket_path.exists():
            assert process.returncode is None, "haproxy exited at start"
            assert asyncio.get_running_loop().time() < deadline, "haproxy did not open its admin socket"
            await asyncio.sleep(0.02)
        yield Haproxy(f"http://127.0.0.1:{port}", socket_path, process)
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


def state_of(server: dict[str, str]) -> str:
    """A server's state in one word: ``UP``, ``DOWN``, ``DRAIN``, ``MAINT`` (``show stat`` says
    ``DRAIN (agent)`` for a drain the agent asked for, ``UP 1/2`` while a check is going down)."""
    return server["status"].split(" ", 1)[0]
