"""The dashboard in a real headless browser (Debian's Chromium), against a running governor.

The store is filled with three models as a new user's first hours look: changes far apart and two
20 s apart, loads under 100 ms and over a minute, a spilled phase. The page must render each model's
plots with their points and a mark at each change and spill, fetching its data with the bearer
token it took from ``#token=...``; driven over the DevTools protocol (``tests/devtools.py``), its
real layout must keep labels apart and fit a phone. Skipped locally when Chromium is missing, a
failure in CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
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
from tests.devtools import Page, open_browser
from tests.fake_ollama import FakeOllama
from tests.test_live import StaticSource

pytestmark = pytest.mark.timeout(180)  # a cold Chromium builds its font cache on the first start

GiB = 1 << 30
TOKEN = "dashboard-test-token"
SCREENSHOT_COPY = Path("/tmp/dashboard.png")
_TRUE = {"1", "yes", "true", "on"}

# model -> its phases: (num_ctx, eval tokens/s, load seconds, spilled); each phase after the first
# is a change, so every model has one change marker per phase after its first.
PHASES: dict[str, list[tuple[int, float, float, bool]]] = {
    "gemma3:27b": [(8192, 31.0, 12.0, False), (32768, 3.2, 95.0, True), (16384, 29.0, 14.0, False)],
    "llama3.1:8b": [(4096, 62.0, 4.0, False), (16384, 58.0, 5.5, False), (65536, 21.0, 11.0, False)],
    "qwen3:0.6b": [
        (4096, 180.0, 0.04, False),
        (2048, 190.0, 0.03, False),
        (73728, 120.0, 0.09, False),
        (8192, 175.0, 0.05, False),
    ],
}
PHASE_SECONDS: dict[str, list[float]] = {"qwen3:0.6b": [3000.0, 20.0, 20.0, 3000.0]}
"""How long each phase lasts where it is not an even share of two hours: here two changes 20 s apart."""
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


def phase_seconds(model: str) -> list[float]:
    """How long each of ``model``'s phases lasts: an even share of two hours unless PHASE_SECONDS says."""
    count = len(PHASES[model])
    return PHASE_SECONDS.get(model, [7200.0 / count] * count)


def fill(store: ResultStore, now: float) -> None:
    """Results for each model in PHASES, one change per phase after the first, over the last two hours."""
    ledger = Ledger(store)
    for offset, (model, phases) in enumerate(PHASES.items()):
        ts = now - 7200.0 + offset * 60.0
        for (num_ctx, eval_tps, load_s, spilled), seconds in zip(phases, phase_seconds(model), strict=True):
            step_s = seconds / REQUESTS_PER_PHASE
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
                        load_ms=load_s * (1.0 + 0.02 * i) * 1000.0 if reloaded else 2.0,
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


# --- the page's real layout, over the DevTools protocol ------------------------------------------------

DESKTOP_WIDTH, PHONE_WIDTH = 1280, 390
ARTIFACTS = Path(os.environ.get("TMPDIR") or "/tmp")

TEXT_BOXES_JS = """[...document.querySelectorAll("svg.plot text")].map(t => {
  const box = t.getBoundingClientRect(), plot = t.closest("svg").getBoundingClientRect();
  return {text: t.textContent, plot: t.closest("svg").dataset.model + " " + t.closest("svg").dataset.metric,
          box: [box.left + scrollX, box.top + scrollY, box.right + scrollX, box.bottom + scrollY],
          inside: box.left >= plot.left - 0.5 && box.right <= plot.right + 0.5
                  && box.top >= plot.top - 0.5 && box.bottom <= plot.bottom + 0.5};
}).filter(t => t.box[2] > t.box[0])"""
"""Every text label in the plots with its page box, and whether it lies inside its plot."""

PLOTS_JS = """[...document.querySelectorAll("svg.plot")].map(s => ({
  model: s.dataset.model, metric: s.dataset.metric,
  axes: Object.fromEntries([...s.querySelectorAll("g[data-axis]")].map(g =>
    [g.dataset.axis, [...g.querySelectorAll("text")].map(t => t.textContent)])),
  markers: [...s.querySelectorAll("line.change-marker")].map(l => Number(l.dataset.ts)),
  groups: [...s.querySelectorAll("g.marker-group")].map(g => Number(g.dataset.count)),
  spilled: s.querySelectorAll("circle.spilled").length,
}))"""
"""Per plot: its axes' tick labels, its change markers, label groups and spilled points."""

PAGE_STATE_JS = """({y: scrollY, height: document.documentElement.scrollHeight, renders: document.body.dataset.renders,
  probe: document.querySelector('section.model').dataset.probe || null,
  top: document.querySelector('section.model[data-model="qwen3:0.6b"]').getBoundingClientRect().top})"""
"""What a refresh must leave as it was: the scroll position, the page height, the cards in place."""


def overlapping(labels: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The pairs of labels whose boxes intersect (touching edges do not count)."""
    pairs = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                pairs.append((f"{a['plot']}: {a['text']}", f"{b['plot']}: {b['text']}"))
    return pairs


def clock_labels(labels: list[str], pattern: str) -> bool:
    """Time labels read as ``pattern`` (HH:MM), but for the one at a midnight, which is the date."""
    return sum(1 for label in labels if not re.fullmatch(pattern, label)) <= 1


@pytest.fixture
async def page(chromium: str, tmp_path: Path) -> AsyncIterator[Page]:
    """A headless Chromium tab driven over the DevTools protocol."""
    async with open_browser(chromium, tmp_path / "devtools-profile") as tab:
        yield tab


async def series_changes(url: str) -> dict[str, list[float]]:
    """The change timestamps (first sightings left out) per model, as the page's data has them."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{url}/governor/api/series?since=24h", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response,
    ):
        body = await response.json()
    return {m["model"]: [c["ts"] for c in m["changes"] if not c["first_seen"]] for m in body["models"]}


class TestDashboardLayout:
    @pytest.mark.parametrize(("width", "mobile"), [(DESKTOP_WIDTH, False), (PHONE_WIDTH, True)])
    async def test_labels_never_overlap(
        self, page: Page, dashboard: Running, width: int, mobile: bool
    ) -> None:
        """No two text labels in the plots intersect, and none spills out of its plot, on a desktop or a phone."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=width, mobile=mobile) == "1"
        labels = await page.evaluate(TEXT_BOXES_JS)
        assert len(labels) > 3 * len(PHASES) * 3
        assert overlapping(labels) == []
        assert [label for label in labels if not label["inside"]] == []

    @pytest.mark.parametrize(("width", "mobile"), [(DESKTOP_WIDTH, False), (PHONE_WIDTH, True)])
    async def test_axes_have_distinct_ticks(
        self, page: Page, dashboard: Running, width: int, mobile: bool
    ) -> None:
        """Every plot's y axis and each model's time axis carry at least three distinct tick labels, times as HH:MM."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=width, mobile=mobile) == "1"
        plots = await page.evaluate(PLOTS_JS)
        assert sorted({(p["model"], p["metric"]) for p in plots}) == sorted(
            (model, metric) for model in PHASES for metric in ("ctx", "eval", "load")
        )
        for plot in plots:
            assert len(set(plot["axes"]["y"])) == len(plot["axes"]["y"]) >= 3, plot
            if plot["metric"] == "load":
                times = plot["axes"]["x"]
                assert len(set(times)) == len(times) >= 3, plot
                assert clock_labels(times, r"\d\d:\d\d"), times

    async def test_load_axis_units_fit_the_range(self, page: Page, dashboard: Running) -> None:
        """Loads under 100 ms are plotted in ms with distinct ticks, loads over a minute in seconds."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=DESKTOP_WIDTH) == "1"
        captions = await page.evaluate(
            """Object.fromEntries([...document.querySelectorAll('svg.plot[data-metric="load"]')].map(
              s => [s.dataset.model, s.closest("figure").querySelector("figcaption").textContent]))"""
        )
        assert captions["qwen3:0.6b"].startswith("load time (ms)")
        assert captions["gemma3:27b"].startswith("load time (s)")

    async def test_every_change_and_spill_has_a_mark(self, page: Page, dashboard: Running) -> None:
        """Each change has a marker in all of its model's plots and a place in one label; each spilled point is red."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=DESKTOP_WIDTH) == "1"
        plots = await page.evaluate(PLOTS_JS)
        changes = await series_changes(dashboard.url)
        for model, phases in PHASES.items():
            assert len(changes[model]) == len(phases) - 1
            spilled_phases = sum(1 for *_, spilled in phases if spilled)
            mine = {p["metric"]: p for p in plots if p["model"] == model}
            for plot in mine.values():
                assert plot["markers"] == pytest.approx(changes[model]), (model, plot["metric"])
            assert sum(mine["ctx"]["groups"]) == len(changes[model])
            assert mine["eval"]["spilled"] == spilled_phases * REQUESTS_PER_PHASE
            assert mine["load"]["spilled"] == spilled_phases * RELOADS_PER_PHASE
        qwen = next(p for p in plots if p["model"] == "qwen3:0.6b" and p["metric"] == "ctx")
        assert max(qwen["groups"]) > 1  # changes 20 s apart share one label

    async def test_phone_width_scrolls_only_inside_cards(self, page: Page, dashboard: Running) -> None:
        """At 390 px the page never scrolls sideways: plots fit, wide tables scroll inside their card."""
        assert (
            await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=PHONE_WIDTH, mobile=True) == "1"
        )
        state = await page.evaluate(
            """({page: document.documentElement.scrollWidth, view: innerWidth,
                plots: Math.max(...[...document.querySelectorAll("svg.plot")].map(s => s.getBoundingClientRect().right)),
                table: (t => ({scroll: t.scrollWidth, client: t.clientWidth}))(document.querySelector("#decisions .scroll"))})"""
        )
        assert state["page"] <= state["view"] == PHONE_WIDTH
        assert state["plots"] <= PHONE_WIDTH
        assert state["table"]["scroll"] > state["table"]["client"]

    async def test_refresh_updates_in_place(self, page: Page, dashboard: Running) -> None:
        """A refresh keeps the scroll position, the page height and the model cards themselves."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=DESKTOP_WIDTH) == "1"
        before = await page.evaluate(
            f"scrollTo(0, 700); document.querySelector('section.model').dataset.probe = 'kept'; {PAGE_STATE_JS}"
        )
        after = await page.evaluate(f"refresh().then(() => {PAGE_STATE_JS})")
        assert before["y"] == 700
        assert after == {**before, "renders": str(int(before["renders"]) + 1)}

    async def test_points_read_on_hover_and_keys(self, page: Page, dashboard: Running) -> None:
        """Hovering a plot reads out the nearest point and the change it ran under; Home, End and arrows step through them."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=DESKTOP_WIDTH) == "1"
        plot = """document.querySelector('svg.plot[data-model="gemma3:27b"][data-metric="eval"]')"""
        readout = """document.querySelector('section.model[data-model="gemma3:27b"] .readout').textContent"""
        centre = await page.evaluate(
            f"(s => {{ s.scrollIntoView({{block: 'center'}}); const r = s.getBoundingClientRect(); "
            f"return {{x: r.left + r.width / 2, y: r.top + r.height / 2}}; }})({plot})"
        )
        await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=centre["x"], y=centre["y"])
        hovered = await page.evaluate(readout)  # the middle of two hours: gemma's second, spilled phase
        assert "tok/s" in hovered and "spilled" in hovered and "ran under num_ctx 8192 → 32768" in hovered
        await page.evaluate(f"{plot}.focus()")
        await page.press("End", 35)
        last = await page.evaluate(readout)
        assert "num_ctx 16384" in last and "ran under num_ctx 32768 → 16384" in last
        await page.press("ArrowLeft", 37)
        assert await page.evaluate(readout) not in ("", last)
        await page.press("Home", 36)
        assert "ran under first seen: num_ctx 8192" in await page.evaluate(readout)

    async def test_page_throws_nothing(self, page: Page, dashboard: Running) -> None:
        """Rendering, a refresh and a resize to phone width raise no uncaught exception in the page."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=DESKTOP_WIDTH) == "1"
        await page.evaluate("refresh()")
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=PHONE_WIDTH,
            height=800,
            deviceScaleFactor=1,
            mobile=True,
        )
        widths = await page.evaluate(
            "new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => "
            "done([...document.querySelectorAll('svg.plot')].map(s => s.viewBox.baseVal.width)))))"
        )
        assert page.exceptions() == []
        assert max(widths) < PHONE_WIDTH  # redrawn at the new width, not scaled down

    async def test_plots_claim_no_scale_they_cannot_show(self, page: Page, dashboard: Running) -> None:
        """One point, a flat zero series and no loads: the plots say so instead of drawing an axis they cannot fill."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=DESKTOP_WIDTH) == "1"
        now = time.time()

        def point(ts: float, eval_tps: float, reloaded: bool) -> dict[str, Any]:
            return {
                "ts": ts,
                "applied_num_ctx": 8192,
                "eval_tokens_per_s": eval_tps,
                "load_ms": 40.0,
                "reloaded": reloaded,
                "spilled": False,
                "status": 200,
            }

        series = {
            "models": [
                {"model": "one", "points": [point(now, 31.0, True)], "changes": []},
                {
                    "model": "flat",
                    "points": [point(now - 20 + i, 0.0, False) for i in range(3)],
                    "changes": [],
                },
            ]
        }
        shown = await page.evaluate(
            f"renderPlots({json.dumps(series)}); new Promise(done => requestAnimationFrame(() => done({PLOTS_JS})))"
        )
        hints = await page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('svg.plot')].map(s => "
            "[s.dataset.model + ' ' + s.dataset.metric, [...s.querySelectorAll('text.hint')].map(t => t.textContent)]))"
        )
        axes = {f"{p['model']} {p['metric']}": p["axes"] for p in shown}
        assert hints["one eval"] == ["one point: 31.0 tok/s"] and len(set(axes["one eval"]["y"])) >= 3
        assert hints["one load"] == ["one point: 40 ms"]
        assert hints["flat eval"] == ["all 3 at 0.0 tok/s"] and "y" not in axes["flat eval"]
        assert hints["flat load"] == ["no loads in this window"] and "y" not in axes["flat load"]
        times = axes["one load"]["x"]
        assert len(set(times)) == len(times) >= 3 and clock_labels(times, r"\d\d:\d\d(:\d\d)?"), times
        assert page.exceptions() == []

    async def test_fits_panel(self, page: Page, dashboard: Running) -> None:
        """The fits list renders each field as a labelled value (contexts and bytes formatted, names as text); absent, it says so."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=DESKTOP_WIDTH) == "1"
        fits = [
            {
                "model": "<img src=x>",
                "max_num_ctx": 32768,
                "free_bytes": 2 * GiB,
                "at_client": {"num_ctx": 8192, "fits": True},
            }
        ]
        shown = await page.evaluate(
            f"renderFits({{fits: {json.dumps(fits)}}}); "
            "({text: document.getElementById('fits').innerText, images: document.querySelectorAll('#fits img').length})"
        )
        assert shown["images"] == 0
        for expected in (
            "<img src=x>",
            "max num ctx",
            "32768 (32k)",
            "free bytes",
            "2.00 GiB",
            "at client · num ctx",
            "8192 (8k)",
            "yes",
        ):
            assert expected in shown["text"]
        absent = await page.evaluate("renderFits({}); document.getElementById('fits').innerText")
        assert absent.strip() == "not available"

    async def test_predictions_panel(self, page: Page, dashboard: Running) -> None:
        """The accuracy in words and each surprise as text (model names never as markup)."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=DESKTOP_WIDTH) == "1"
        predictions = {
            "checked": 8,
            "held": 7,
            "accuracy": 0.875,
            "surprises": [
                {
                    "ts": 1_700_000_000,
                    "model": "<img src=x>",
                    "predicted": "load",
                    "observed": "evict",
                    "text": "predicted load beside the others, Ollama unloaded nomic-embed-text:latest",
                }
            ],
        }
        shown = await page.evaluate(
            f"renderPredictions({{predictions: {json.dumps(predictions)}}}); "
            "({text: document.getElementById('predictions').innerText, "
            "images: document.querySelectorAll('#predictions img').length})"
        )
        assert shown["images"] == 0
        for expected in (
            "7 of 8 predictions held (88 %)",
            "<img src=x>",
            "Ollama unloaded nomic-embed-text:latest",
        ):
            assert expected in shown["text"]
        none = {"checked": 0, "held": 0, "accuracy": None, "surprises": []}
        empty = await page.evaluate(
            f"renderPredictions({{predictions: {json.dumps(none)}}}); document.getElementById('predictions').innerText"
        )
        assert "nothing both predicted and observed yet" in empty and "no surprises" in empty
        absent = await page.evaluate(
            "renderPredictions({}); document.getElementById('predictions').innerText"
        )
        assert absent.strip() == "not available"
        assert page.exceptions() == []

    async def test_memory_in_words(self, page: Page, dashboard: Running) -> None:
        """The header says what memory the host has, in words, for each kind of memory source."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=DESKTOP_WIDTH) == "1"
        assert "NVIDIA GPU (nvml)" in await page.evaluate("document.getElementById('memory').textContent")
        for kind, source, words in (
            ("system", "system", "system memory (CPU only)"),
            ("unified", "apple", "Apple unified memory"),
            ("gpu", "amdgpu", "AMD GPU"),
            ("unknown", "none", "unknown memory"),
        ):
            gpu = {"kind": kind, "source": source, "configured_source": "auto", "known": False, "devices": []}
            text = await page.evaluate(f"memoryWords({json.dumps(gpu)})")
            assert words in text and "chosen by auto" in text, text

    @pytest.mark.parametrize(("width", "mobile"), [(DESKTOP_WIDTH, False), (PHONE_WIDTH, True)])
    async def test_screenshots(
        self, page: Page, dashboard: Running, tmp_path: Path, width: int, mobile: bool
    ) -> None:
        """Whole-page screenshots at desktop and phone width for a person to look at (copied to $TMPDIR or /tmp)."""
        assert await page.open(f"{dashboard.url}/governor/#token={TOKEN}", width=width, mobile=mobile) == "1"
        png = await page.screenshot(tmp_path / f"dashboard-{width}.png")
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
        with contextlib.suppress(OSError):
            copy = shutil.copyfile(png, ARTIFACTS / png.name)
            print(f"dashboard screenshot at {width} px: {copy}")
