"""Headless Chromium driven over the DevTools protocol: real layout boxes, page state and screenshots.

``--dump-dom`` shows the markup only; the layout checks (do two labels overlap, does the page scroll
sideways on a phone) need the boxes the browser computed. One browser per ``open_browser``, one page,
spoken to over a websocket with aiohttp; nothing but Debian's ``chromium`` is needed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

HEADLESS_ARGS = (
    "--headless",
    "--no-sandbox",  # root in a container: no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
WAIT_READY_JS = """new Promise(resolve => {
  const check = () => { if (document.body && document.body.dataset.ready) resolve(document.body.dataset.ready); };
  new MutationObserver(check).observe(document.documentElement, {attributes: true, subtree: true});
  check();
})"""
"""Resolves with ``<body data-ready>`` once the page has rendered (or failed to)."""


class DevToolsError(RuntimeError):
    """A DevTools call answered with an error, or the page threw."""


class Page:
    """One browser tab: send commands, wait for events, evaluate script, take screenshots."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    async def _receive(self) -> dict[str, Any]:
        message = await self._ws.receive(timeout=60.0)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise DevToolsError(f"the browser closed the connection: {message.type!r}")
        parsed: dict[str, Any] = json.loads(message.data)
        return parsed

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        await self._ws.send_json({"id": self._next_id, "method": method, "params": params})
        while True:
            message = await self._receive()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self._events.append(message)

    async def wait_event(self, method: str) -> dict[str, Any]:
        """The first event ``method`` not yet waited for."""
        while True:
            for index, event in enumerate(self._events):
                if event["method"] == method:
                    return self._events.pop(index)
            message = await self._receive()
            if "method" in message:
                self._events.append(message)

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (awaited when it is a promise)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise DevToolsError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")

    async def open(self, url: str, *, width: int, height: int = 900, mobile: bool = False) -> str:
        """Load ``url`` in a ``width`` x ``height`` viewport; returns ``<body data-ready>``."""
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )
        await self.call("Page.enable")
        await self.call("Runtime.enable")
        self._events.clear()
        navigated = await self.call("Page.navigate", url=url)
        if not navigated.get("loaderId"):  # only the #fragment differs: the same document, no load
            await self.call("Page.reload", ignoreCache=True)
        await self.wait_event("Page.loadEventFired")
        ready: str = await self.evaluate(WAIT_READY_JS)
        return ready

    def exceptions(self) -> list[str]:
        """The uncaught exceptions the page threw since it was opened (events read so far)."""
        thrown = [
            e["params"]["exceptionDetails"] for e in self._events if e["method"] == "Runtime.exceptionThrown"
        ]
        return [
            str(detail.get("exception", {}).get("description") or detail.get("text")) for detail in thrown
        ]

    async def press(self, key: str, code: int) -> None:
        """Press and release ``key`` (its Windows virtual key ``code``) in the focused element."""
        for kind in ("keyDown", "keyUp"):
            await self.call(
                "Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code
            )

    async def screenshot(self, path: Path) -> Path:
        """The whole page (not only the viewport) as a PNG at ``path``."""
        metrics = await self.call("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = await self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


async def _drain(stream: asyncio.StreamReader, found: asyncio.Future[str]) -> None:
    """Read Chromium's stderr to its end (so it never blocks on a full pipe), noting the DevTools URL."""
    tail: list[str] = []
    async for raw in stream:
        line = raw.decode("utf-8", "replace")
        tail = [*tail[-20:], line]
        match = _LISTENING.search(line)
        if match and not found.done():
            found.set_result(match.group(1))
    if not found.done():
        found.set_exception(DevToolsError("chromium exited before DevTools listened:\n" + "".join(tail)))


@contextlib.asynccontextmanager
async def open_browser(chromium: str, profile: Path) -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab, closed (its whole process group) on exit."""
    proc = await asyncio.create_subprocess_exec(
        chromium,
        *HEADLESS_ARGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(profile)},
        start_new_session=True,
    )
    assert proc.stderr is not None
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    drain = asyncio.create_task(_drain(proc.stderr, found))
    try:
        browser_url = await asyncio.wait_for(found, timeout=90.0)
        http_base = "http://" + browser_url.removeprefix("ws://").split("/", 1)[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{http_base}/json/list") as response:
                targets = await response.json()
            [tab] = [t for t in targets if t["type"] == "page"]
            async with http.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield Page(ws)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        await drain
