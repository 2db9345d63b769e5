"""Tools for the fault suite: raw sockets, hostile upstreams, and config snippets.

A hostile upstream is a plain asyncio server that reads one request and then does whatever the
test scripts (stalls, bad framing, dies), where the framing itself is the fault and aiohttp's
server would not let the test write it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from yarl import URL

from proxy.upstream.client import OWN_USER_AGENT

Respond = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OWN_REQUEST = f"User-Agent: {OWN_USER_AGENT}".encode()
ROOT = Path(__file__).resolve().parent.parent

STATIC_2048 = '[[rules]]\nmodels = ["*"]\npolicies = [{ use = "static", num_ctx = 2048 }]\n'
"""Every model governed: num_ctx 2048, so a rewritten body is easy to see upstream."""


def limits(**values: str) -> str:
    """A ``[limits]`` table, e.g. ``limits(first_byte_timeout="300ms")``."""
    return "[limits]\n" + "".join(f'{key} = "{value}"\n' for key, value in values.items())


def governed(*policies: str, timeout: str = "250ms") -> str:
    """Top-level settings and one rule for every model running ``policies`` (inline tables)."""
    return f'policy_timeout = "{timeout}"\n[[rules]]\nmodels = ["*"]\npolicies = [{", ".join(policies)}]\n'


def address(url: str) -> tuple[str, int]:
    parsed = URL(url)
    assert parsed.host is not None and parsed.port is not None
    return parsed.host, parsed.port


async def exchange(url: str, data: bytes, *, timeout_s: float = 10.0) -> bytes:
    """Write ``data`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


async def first_response(url: str, data: bytes, *, timeout_s: float = 10.0) -> bytes:
    """Write ``data`` and read one ``Content-Length`` response, without waiting for the close
    (aiohttp lingers up to 10 s reading a body it did not want before it closes)."""
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        writer.write(data)
        await writer.drain()
        head, body = await asyncio.wait_for(read_head(reader), timeout_s)
        return head + body
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    """The status code of the first response in ``response``."""
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    """The body of a single ``Content-Length`` response."""
    return response.partition(b"\r\n\r\n")[2]


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within ``timeout_s``."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout_s):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """A request's head and its ``Content-Length`` body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length) if length else b""


@dataclass
class Hostile:
    """A running hostile upstream: its URL and the request heads it received."""

    url: str
    heads: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def hostile_upstream(respond: Respond) -> AsyncIterator[Hostile]:
    """Serve ``respond`` on 127.0.0.1 for as long as the context lasts."""
    hostile = Hostile("")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, _ = await read_head(reader)
            if OWN_REQUEST in head:  # the governor's own fact-gathering: a plain, quick 404
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                await writer.drain()
                return
            hostile.heads.append(head)
            await respond(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    hostile.url = f"http://{host}:{port}"
    try:
        yield hostile
    finally:
        server.close()


NDJSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def done_line(**fields: object) -> bytes:
    """A final ``done: true`` generate line with Ollama's figures."""
    import json

    final = {"model": "m", "response": "", "done": True, "done_reason": "stop", "eval_count": 4}
    final.update(fields)
    return json.dumps(final).encode() + b"\n"


class Governor:
    """A real ``python -m proxy serve`` process: every byte it writes, and its JSON log lines."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.output = bytearray()
        self.logs: list[dict[str, object]] = []
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(stream)) for stream in (process.stdout, process.stderr)
        ]

    async def _read(self, stream: asyncio.StreamReader) -> None:
        import json

        async for line in stream:
            self.output += line
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"event": "non-json"})

    def events(self, name: str) -> list[dict[str, object]]:
        """The log events called ``name`` so far."""
        return [e for e in self.logs if e.get("event") == name]

    async def wait_for(self, name: str, timeout_s: float = 15.0) -> dict[str, object]:
        """The first ``name`` event, waiting for it if need be."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.events(name):
            if self.process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no {name!r} event; output:\n{self.output.decode(errors='replace')}")
            await asyncio.sleep(0.02)
        return self.events(name)[0]

    async def finished(self, timeout_s: float = 30.0) -> int:
        """Wait for the process to exit and its output to be read; its exit status."""
        status = await asyncio.wait_for(self.process.wait(), timeout_s)
        await asyncio.gather(*self._readers)
        return status

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


@asynccontextmanager
async def served_governor(config: str, upstream: str, workdir: Path) -> AsyncIterator[Governor]:
    """Run the governor with ``config`` in front of ``upstream``; killed afterwards if still up."""
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    path = workdir / "governor.toml"
    path.write_text(config)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(path),
        "--log-format",
        "json",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        upstream,
        "--state-dir",
        str(workdir / "state"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    governor = Governor(process, port)
    try:
        await governor.wait_for("listening")
        yield governor
    finally:
        await governor.kill()
