"""The dashboard in a real headless browser (Debian's Chromium), against a running governor.

The store is filled with two models that each went through two changes; the page must render
both plots per model with their points and a marker at each change, fetching its data with the
bearer token it took from ``#token=...``. Skipped locally when Chromium is missing, a failure in
CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from policies.context import GpuDevice, GpuSnapshot
from proxy.app import create_app
from proxy.config import Config, OllamaSettings
from proxy.facts.ollama import parse_loaded
from proxy.govern.record import GovernedRequest, PolicyChange
from proxy.govern.rules import Governor
from proxy.keys import FACTS
from proxy.ledger.ledger import Ledger
from proxy.ledger.store import ResultStore
from tests.conftest import Running, start_app
from tests.fake_ollama import FakeOllama
from tests.test_live import StaticSource

pytestmark = pytest.mark.timeout(180)  # a cold Chromium builds its font cache on the first start

GiB = 1 << 30
TOKEN = "dashboard-test-token"
SCREENSHOT_COPY = Path("/tmp/dashboard.png")
_TRUE = {"1", "yes", "true", "on"}

# model -> its phases: (num_ctx, eval tokens/s, load seconds, spilled); each phase after the first
# is a change, so every model has exactly two change markers.
PHASES: dict[str, list[tuple[int, float, float, bool]]] = {
    "gemma3:27b": [(8192, 31.0, 12.0, False), (32768, 3.2, 95.0, True), (16384, 29.0, 14.0, False)],
    "llama3.1:8b": [(4096, 62.0, 4.0, False), (16384, 58.0, 5.5, False), (65536, 21.0, 11.0, False)],
}
REQUESTS_PER_PHASE = 8
RELOADS_PER_PHASE = 2  # the first request of a phase, and one more after keep_alive ran out


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in _TRUE


@pytest.fixture
def chromium() -> str:
    """The Chromium binary; missing is a skip locally and a failure in CI."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if in_ci():
            pytest.fail("chromium is not installed: .ci/run installs Debian's 'chromium' package")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return found


def fill(store: ResultStore, now: float) -> None:
    """Results for two models across two changes each, spread over the last two hours."""
    ledger = Ledger(store)
    step_s = 7200.0 / (len(next(iter(PHASES.values()))) * REQUESTS_PER_PHASE)
    for offset, (model, phases) in enumerate(PHASES.items()):
        ts = now - 7200.0 + offset * 60.0
        for num_ctx, eval_tps, load_s, spilled in phases:
            for i in range(REQUESTS_PER_PHASE):
                reloaded = i in (0, REQUESTS_PER_PHASE // 2)
                ledger.record(
                    GovernedRequest(
                        ts=ts,
                        model=model,
                        endpoint="chat",
                        applied_num_ctx=num_ctx,
                        applied_keep_alive="30m",
                        changed_by=(PolicyChange("headroom", ("num_ctx",), "fits"),),
                        status=200,
                        load_ms=(load_s + 0.3 * i) * 1000.0 if reloaded else 2.0,
                        total_ms=4000.0,
                        ttfb_ms=300.0,
                        eval_tokens_per_s=eval_tps + (i % 3) - 1,
                        prompt_tokens_per_s=500.0,
                        reloaded=reloaded,
                        spilled=spilled,
                        done_reason="stop",
                    )
                )
                ts += step_s
    assert store.flush(timeout_s=10.0)


@pytest.fixture
async def dashboard(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[Running]:
    """The governor with a filled results store, the live views and the admin token."""
    store = ResultStore(tmp_path / "results.db", flush_interval_s=0.05)
    fill(store, time.time())
    # The facts poller reads /api/ps once at start and then only every hour: the test's own view of
    # what is loaded stays in place while the browser runs.
    config = Config(upstream=fake.url, admin_token=TOKEN, ollama=OllamaSettings(ps_interval_s=3600.0))  # type: ignore[attr-defined]
    loaded = [
        {"name": "gemma3:27b", "size": 21 * GiB, "size_vram": 21 * GiB, "context_length": 16384},
        {"name": "llama3.1:8b", "size": 9 * GiB, "size_vram": 6 * GiB, "context_length": 65536},
    ]
    gpu = GpuSnapshot(
        source="nvml",
        devices=(GpuDevice(0, "NVIDIA RTX 4090", 24 * GiB, 2 * GiB, 22 * GiB),),
        taken_at=time.time(),
    )
    app = create_app(Governor.build(config), backend=store, memory_source=StaticSource(gpu))
    server = await start_app(app)
    await app[FACTS].refresh_loaded()
    app[FACTS].loaded = parse_loaded(loaded, gpu_host=True)
    yield server
    await server.runner.cleanup()
    await store.aclose()


async def run_chromium(chromium: str, tmp_path: Path, url: str, *mode: str) -> str:
    """Run headless Chromium on ``url`` without blocking the loop the governor serves on."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    args = [
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
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *mode,
        url,
    ]
    proc = await asyncio.create_subprocess_exec(
        chromium,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(tmp_path)},
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120.0)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    assert proc.returncode == 0, stderr.decode("utf-8", "replace")[-3000:]
    return stdout.decode("utf-8")


class Dom(HTMLParser):
    """The parts of the dumped DOM the tests check: body attributes, plots and their markers."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.plots: list[dict[str, Any]] = []
        self._plot: dict[str, Any] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "body":
            self.body = values
        elif tag == "svg" and "plot" in (values.get("class") or ""):
            self._plot = {**values, "markers": [], "circles": 0}
            self.plots.append(self._plot)
        elif self._plot is not None and tag == "line" and values.get("class") == "change-marker":
            self._plot["markers"].append(values.get("data-num-ctx"))
        elif self._plot is not None and tag == "circle":
            self._plot["circles"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._plot = None

    def plot(self, model: str, metric: str) -> dict[str, Any]:
        [found] = [p for p in self.plots if p.get("data-model") == model and p.get("data-metric") == metric]
        return found


def expected_points(model: str) -> tuple[int, int]:
    """(eval points, load points) the page must draw for ``model``."""
    requests = len(PHASES[model]) * REQUESTS_PER_PHASE
    return requests, len(PHASES[model]) * RELOADS_PER_PHASE


class TestDashboardInChromium:
    async def test_plots_render_with_data(self, chromium: str, dashboard: Running, tmp_path: Path) -> None:
        """Both plots of both models carry their points and a marker at each change."""
        html = await run_chromium(
            chromium, tmp_path, f"{dashboard.url}/governor/#token={TOKEN}", "--dump-dom"
        )
        dom = Dom(html)
        assert dom.body.get("data-ready") == "1", html[-3000:]
        for model, phases in PHASES.items():
            eval_points, load_points = expected_points(model)
            changes = [str(num_ctx) for num_ctx, *_ in phases[1:]]
            for metric, points in (("eval", eval_points), ("load", load_points)):
                plot = dom.plot(model, metric)
                assert int(plot["data-points"]) == points > 0, (model, metric)
                assert plot["circles"] == points
                assert plot["markers"] == changes, (model, metric)
        assert "num_ctx 8192 → 32768" in html and "num_ctx 32768 → 16384" in html  # the changes table
        assert "2.00 GiB free of 24.00 GiB" in html
        assert "llama3.1:8b" in html and "spilled" in html  # the loaded table flags the partial load

    async def test_without_the_token_it_says_what_to_do(
        self, chromium: str, dashboard: Running, tmp_path: Path
    ) -> None:
        """Opened without ``#token=``, the page explains how to pass the admin token."""
        html = await run_chromium(chromium, tmp_path, f"{dashboard.url}/governor/", "--dump-dom")
        dom = Dom(html)
        assert dom.body.get("data-ready") == "error"
        assert "#token=" in html and dom.plots == []

    async def test_screenshot(self, chromium: str, dashboard: Running, tmp_path: Path) -> None:
        """A screenshot for a human to look at (copied to /tmp/dashboard.png)."""
        png = tmp_path / "dashboard.png"
        await run_chromium(
            chromium,
            tmp_path,
            f"{dashboard.url}/governor/#token={TOKEN}",
            f"--screenshot={png}",
            "--window-size=1400,1900",
        )
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
        with contextlib.suppress(OSError):
            shutil.copyfile(png, SCREENSHOT_COPY)
