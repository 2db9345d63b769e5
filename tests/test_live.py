"""The live views: Prometheus metrics, /governor/status, the series behind the plots, admin auth."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from structlog.testing import capture_logs

from policies.context import GpuDevice, GpuSnapshot
from proxy.app import create_app, reload
from proxy.config import Config
from proxy.facts.ollama import parse_loaded
from proxy.govern.record import Applied, GovernedRequest, PolicyChange, Transition
from proxy.govern.rules import Governor
from proxy.keys import FACTS, MEMORY
from proxy.ledger.ledger import Ledger
from proxy.ledger.memory import MemoryBackend
from proxy.ledger.store import ResultStore
from proxy.views.auth import warn_if_exposed
from proxy.views.metrics import CONTENT_TYPE, OTHER, GovernorMetrics
from tests.conftest import PASS_THROUGH, Running, StartFake, StartProxy, eventually, start_app
from tests.fake_ollama import FakeOllama

GiB = 1 << 30
STATIC_8192 = """
[[rules]]
models = ["gemma3-270m*"]
policies = [{ use = "static", num_ctx = 8192, keep_alive = "30m" }]
"""


def result_event(**fields: Any) -> GovernedRequest:
    """A result as the pipeline records it, with keyword overrides."""
    values: dict[str, Any] = {
        "ts": time.time(),
        "model": "gemma3:4b",
        "endpoint": "chat",
        "stream": True,
        "client_num_ctx": None,
        "applied_num_ctx": 8192,
        "client_keep_alive": None,
        "applied_keep_alive": "30m",
        "changed_by": (PolicyChange("static", ("num_ctx",), "static"),),
        "dry_run": False,
        "status": 200,
        "ttfb_ms": 120.0,
        "completed": True,
        "done_reason": "stop",
        "load_ms": 2.0,
        "prompt_tokens": 12,
        "prompt_tokens_per_s": 400.0,
        "eval_tokens": 64,
        "eval_tokens_per_s": 42.0,
        "total_ms": 1800.0,
        "reloaded": False,
    }
    values.update(fields)
    return GovernedRequest(**values)


def a_change(before: int, after: int) -> Transition:
    """A change of the applied num_ctx, as the ledger stamps it on the record that opened it."""
    return Transition(Applied(before, "30m"), Applied(after, "30m"))


def gpu_snapshot(*free_total: tuple[int, int]) -> GpuSnapshot:
    devices = tuple(
        GpuDevice(index=i, name=f"GPU {i}", total_bytes=total, free_bytes=free, used_bytes=total - free)
        for i, (free, total) in enumerate(free_total)
    )
    return GpuSnapshot(source="nvml", devices=devices, taken_at=time.time())


def samples(metrics: GovernorMetrics) -> list[Sample]:
    """Every sample of a scrape, parsed back with prometheus-client's own parser."""
    text = metrics.render().decode("utf-8")
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(metrics: GovernorMetrics, name: str, **labels: str) -> float | None:
    """The sample ``name`` whose labels include ``labels``, or None when it is absent."""
    found = [s.value for s in samples(metrics) if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, f"{name}{labels} is ambiguous: {found}"
    return found[0] if found else None


class TestGovernorMetrics:
    def test_requests_and_latencies_by_model_and_endpoint(self) -> None:
        """Each event counts once under its status class; latencies land in seconds."""
        metrics = GovernorMetrics()
        metrics.observe(result_event(total_ms=1800.0, ttfb_ms=120.0))
        metrics.observe(result_event(total_ms=200.0, ttfb_ms=30.0))
        metrics.observe(result_event(endpoint="generate", status=400, total_ms=None, ttfb_ms=None))
        name = "ollama_governor_requests_total"
        assert value(metrics, name, model="gemma3:4b", endpoint="chat", status_class="2xx") == 2
        assert value(metrics, name, model="gemma3:4b", endpoint="generate", status_class="4xx") == 1
        duration = "ollama_governor_request_duration_seconds"
        assert value(metrics, f"{duration}_count", model="gemma3:4b", endpoint="chat") == 2
        assert value(metrics, f"{duration}_sum", model="gemma3:4b", endpoint="chat") == pytest.approx(2.0)
        assert value(metrics, f"{duration}_bucket", model="gemma3:4b", endpoint="chat", le="0.25") == 1
        ttfb = "ollama_governor_time_to_first_byte_seconds"
        assert value(metrics, f"{ttfb}_sum", model="gemma3:4b", endpoint="chat") == pytest.approx(0.15)
        assert value(metrics, f"{duration}_count", model="gemma3:4b", endpoint="generate") == 0

    def test_load_time_counts_reloads_only(self) -> None:
        """A warm request's few ms of load_duration would drown the cost of a load: not observed."""
        metrics = GovernorMetrics()
        metrics.observe(result_event(reloaded=True, load_ms=6500.0, applied_num_ctx=16384))
        metrics.observe(result_event(reloaded=False, load_ms=3.0, applied_num_ctx=16384))
        load = "ollama_governor_load_duration_seconds"
        assert value(metrics, f"{load}_count", model="gemma3:4b", num_ctx="16384") == 1
        assert value(metrics, f"{load}_sum", model="gemma3:4b", num_ctx="16384") == pytest.approx(6.5)
        assert value(metrics, f"{load}_bucket", model="gemma3:4b", num_ctx="16384", le="5.0") == 0
        assert value(metrics, f"{load}_bucket", model="gemma3:4b", num_ctx="16384", le="10.0") == 1

    def test_tokens_per_second_by_num_ctx(self) -> None:
        """Generation and prompt speed are split by the context they ran with ("default": none sent)."""
        metrics = GovernorMetrics()
        metrics.observe(result_event(applied_num_ctx=8192, eval_tokens_per_s=40.0))
        metrics.observe(result_event(applied_num_ctx=8192, eval_tokens_per_s=44.0))
        metrics.observe(result_event(applied_num_ctx=32768, eval_tokens_per_s=3.0, prompt_tokens_per_s=None))
        metrics.observe(result_event(applied_num_ctx=None, eval_tokens_per_s=None))
        rate = "ollama_governor_eval_tokens_per_second"
        assert value(metrics, f"{rate}_count", model="gemma3:4b", num_ctx="8192") == 2
        assert value(metrics, f"{rate}_sum", model="gemma3:4b", num_ctx="8192") == pytest.approx(84.0)
        assert value(metrics, f"{rate}_sum", model="gemma3:4b", num_ctx="32768") == pytest.approx(3.0)
        assert value(metrics, f"{rate}_count", model="gemma3:4b", num_ctx="default") == 0
        prompt = "ollama_governor_prompt_tokens_per_second"
        assert value(metrics, f"{prompt}_count", model="gemma3:4b", num_ctx="32768") == 0
        assert value(metrics, f"{prompt}_count", model="gemma3:4b", num_ctx="default") == 1

    def test_errors_spills_and_changes(self) -> None:
        """Upstream failures (502 or a broken stream), policy errors, spilled requests, changes."""
        metrics = GovernorMetrics()
        metrics.observe(result_event(status=502, error="upstream Ollama is unreachable"))
        metrics.observe(result_event(status=200, error="upstream closed the stream", completed=False))
        metrics.observe(result_event(policy_errors=["a: timed out after 250 ms", "b: ValueError: x"]))
        metrics.observe(result_event(spilled=True))
        metrics.observe(result_event(spilled=None))
        metrics.observe(result_event(change=a_change(8192, 16384)))
        metrics.observe(result_event(change=a_change(16384, 8192)))
        metrics.observe(result_event(change=Transition(None, Applied(8192, "30m"))))  # first seen: no change
        metrics.observe(result_event(reloaded=True, spilled=True))
        model = {"model": "gemma3:4b"}
        assert value(metrics, "ollama_governor_upstream_errors_total", endpoint="chat", **model) == 2
        assert value(metrics, "ollama_governor_requests_total", status_class="5xx", **model) == 1
        assert value(metrics, "ollama_governor_policy_errors_total", **model) == 2
        assert value(metrics, "ollama_governor_spilled_requests_total", **model) == 2
        assert value(metrics, "ollama_governor_changes_total", **model) == 2
        assert value(metrics, "ollama_governor_spills_total", **model) == 1

    def test_counts_changes_and_spilled_loads_from_events(self) -> None:
        """A new applied pair is a change (not the first, a dry run or a failure); a spilled reload
        is a spill."""
        metrics = GovernorMetrics()
        ledger = Ledger(MemoryBackend(), [metrics.observe])  # the ledger says which records changed
        ledger.record(result_event(applied_num_ctx=8192))  # first seen: no change
        ledger.record(result_event(applied_num_ctx=65536, dry_run=True))
        ledger.record(result_event(applied_num_ctx=65536, status=500))
        ledger.record(result_event(applied_num_ctx=8192))
        assert value(metrics, "ollama_governor_changes_total", model="gemma3:4b") is None
        ledger.record(result_event(applied_num_ctx=32768, reloaded=True, load_ms=9000.0, spilled=True))
        ledger.record(result_event(applied_num_ctx=32768, spilled=True))
        ledger.record(result_event(applied_num_ctx=32768, applied_keep_alive="5m"))
        assert value(metrics, "ollama_governor_changes_total", model="gemma3:4b") == 2
        assert value(metrics, "ollama_governor_spills_total", model="gemma3:4b") == 1
        assert value(metrics, "ollama_governor_spilled_requests_total", model="gemma3:4b") == 2

    def test_model_names_are_canonical_and_capped(self) -> None:
        """``llama3.1`` is ``llama3.1:latest``; past the cap, new names count as ``_other``."""
        metrics = GovernorMetrics(max_models=2)
        for name in ("llama3.1", "llama3.1:latest", "gemma3:4b", "made-up-1", "made-up-2"):
            metrics.observe(result_event(model=name))
        name = "ollama_governor_requests_total"
        assert value(metrics, name, model="llama3.1:latest") == 2
        assert value(metrics, name, model="gemma3:4b") == 1
        assert value(metrics, name, model=OTHER) == 2
        assert value(metrics, name, model="made-up-1") is None

    def test_gpu_gauges_per_device_absent_when_unknown(self) -> None:
        """Known GPUs publish free/total bytes per device; an unknown state removes them (no fake 0)."""
        metrics = GovernorMetrics()
        assert value(metrics, "ollama_governor_gpu_known") == 0
        assert value(metrics, "ollama_governor_gpu_free_bytes") is None
        metrics.set_gpu(gpu_snapshot((10 * GiB, 24 * GiB), (2 * GiB, 24 * GiB)))
        assert value(metrics, "ollama_governor_gpu_free_bytes", gpu="0") == 10 * GiB
        assert value(metrics, "ollama_governor_gpu_free_bytes", gpu="1") == 2 * GiB
        assert value(metrics, "ollama_governor_gpu_total_bytes", gpu="1") == 24 * GiB
        assert value(metrics, "ollama_governor_gpu_known") == 1
        metrics.set_gpu(GpuSnapshot(source="nvml", error="NVML: driver not loaded"))
        assert value(metrics, "ollama_governor_gpu_free_bytes", gpu="0") is None
        assert value(metrics, "ollama_governor_gpu_known") == 0
        metrics.set_gpu(None)
        assert value(metrics, "ollama_governor_gpu_known") == 0

    def test_registries_are_private(self) -> None:
        """Two instances (two apps, a test beside a server) never share or clash on a metric."""
        first, second = GovernorMetrics(), GovernorMetrics()
        first.observe(result_event())
        assert value(first, "ollama_governor_requests_total", model="gemma3:4b") == 1
        assert value(second, "ollama_governor_requests_total", model="gemma3:4b") is None

    def test_content_negotiation(self) -> None:
        """Plain text by default; OpenMetrics when the scraper asks for it."""
        metrics = GovernorMetrics()
        assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
        _, plain = metrics.render_for(None)
        assert plain.startswith("text/plain")
        body, openmetrics = metrics.render_for("application/openmetrics-text; version=1.0.0")
        assert openmetrics.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


class TestLoadedModels:
    async def test_loaded_models_and_spills(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """What the /api/ps poller read shows; size_vram 0 is a spill only on a host with a GPU."""
        ps = [
            {
                "name": "cpu-only:1b",
                "size": 5 * GiB,
                "size_vram": 0,
                "context_length": 4096,
                "expires_at": "2030-01-01T00:00:00Z",
            },
            {"name": "partial:27b", "size": 20 * GiB, "size_vram": 12 * GiB, "context_length": 32768},
            {
                "name": "facts:8b",
                "digest": "sha256:x",
                "size": 6 * GiB,
                "size_vram": 6 * GiB,
                "context_length": 8192,
            },
        ]
        live = Live()
        live.server = await start_proxy("http://127.0.0.1:9", PASS_THROUGH, **live.options())
        facts = live.server.app[FACTS]
        facts.loaded = parse_loaded(ps, gpu_host=False)
        _, body = await get_json(http, f"{live.server.url}/governor/status")
        assert [(m["name"], m["spilled"]) for m in body["loaded"]] == [
            ("cpu-only:1b", False),
            ("partial:27b", False),
            ("facts:8b", False),
        ]
        assert body["loaded"][0]["expires_at"] == "2030-01-01T00:00:00Z"
        facts.loaded = parse_loaded(ps, gpu_host=True)
        _, body = await get_json(http, f"{live.server.url}/governor/status")
        assert [m["spilled"] for m in body["loaded"]] == [True, True, False]


class TestMemoryLedger:
    async def test_bounded_and_newest_first(self) -> None:
        """A ring buffer: the newest ``maxlen`` decisions, newest first."""
        recent = MemoryBackend(maxlen=3)
        ledger = Ledger(recent)
        for i in range(5):
            ledger.record(result_event(ts=1000.0 + i))
        assert [d["ts"] for d in await recent.decisions()] == [1004.0, 1003.0, 1002.0]

    async def test_keeps_the_record_fields_only(self) -> None:
        """A decision is the record's fields and its change: nothing else (no prompt) can be in it."""
        recent = MemoryBackend()
        Ledger(recent).record(result_event(model="llama3.1"))
        [decision] = await recent.decisions()
        assert set(decision) == {*result_event().fields(), "change_id"}
        assert decision["model"] == "llama3.1:latest" and decision["applied_num_ctx"] == 8192

    async def test_changes_with_before_after_figures(self) -> None:
        """Changes open like the store opens them; figures compare the change with the one before."""
        backend = MemoryBackend()
        recent = Ledger(backend)
        recent.record(
            result_event(ts=1.0, applied_num_ctx=8192, reloaded=True, load_ms=2000.0, eval_tokens_per_s=40.0)
        )
        recent.record(result_event(ts=2.0, applied_num_ctx=8192, eval_tokens_per_s=44.0))
        recent.record(result_event(ts=3.0, applied_num_ctx=65536, dry_run=True))  # never sent: no change
        recent.record(result_event(ts=4.0, applied_num_ctx=32768, status=500))  # failed: no change
        recent.record(
            result_event(
                ts=5.0,
                applied_num_ctx=32768,
                reloaded=True,
                load_ms=9000.0,
                eval_tokens_per_s=4.0,
                spilled=True,
            )
        )
        recent.record(result_event(ts=6.0, applied_num_ctx=32768, eval_tokens_per_s=6.0))
        newest, first = await backend.changes()
        assert first["first_seen"] and first["before"] is None and first["to_num_ctx"] == 8192
        assert first["after"]["requests"] == 3  # as in the report: the failed one counts, the dry run not
        assert (newest["from_num_ctx"], newest["to_num_ctx"], newest["first_seen"]) == (8192, 32768, False)
        assert newest["spilled"] is True
        assert newest["before"]["eval_tokens_per_s_median"] == 42.0
        assert newest["after"]["eval_tokens_per_s_median"] == 5.0
        assert newest["eval_tokens_per_s_ratio"] == pytest.approx(5.0 / 42.0)
        assert newest["load_ms_ratio"] == pytest.approx(9000.0 / 2000.0)
        assert [p["ts"] for p in await backend.points(since_ts=5.0)] == [5.0, 6.0]


# --- through a running proxy ------------------------------------------------------------------------


class StaticSource:
    """A memory source that reads whatever snapshot the test set (None: no GPU source)."""

    def __init__(self, snapshot: GpuSnapshot | None) -> None:
        self.snapshot = snapshot

    @property
    def name(self) -> str:
        return self.snapshot.source if self.snapshot is not None else "none"

    async def read(self) -> GpuSnapshot:
        return self.snapshot or GpuSnapshot(source="none", error="no GPU source in this test")

    async def close(self) -> None:
        return None


class Live:
    """A governor whose memory sample the test sets, and a sink that sees every record."""

    def __init__(self, *, store: ResultStore | None = None, gpu: GpuSnapshot | None = None) -> None:
        self.source = StaticSource(gpu)
        self.store = store
        self.recorded: list[GovernedRequest] = []
        self.server: Running | None = None

    async def set_gpu(self, snapshot: GpuSnapshot | None) -> None:
        """Change what the memory source reads, and have the sampler read it now."""
        assert self.server is not None
        self.source.snapshot = snapshot
        await self.server.app[MEMORY].refresh()

    def options(self) -> dict[str, Any]:
        """``create_app`` keyword arguments that wire the test's source, sink and store in."""
        options: dict[str, Any] = {"memory_source": self.source, "sinks": [self.recorded.append]}
        if self.store is not None:
            options["backend"] = self.store
        return options


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(url, **kwargs) as response:
        return response.status, await response.json()


async def generate(live: Live, http: aiohttp.ClientSession, **options: Any) -> None:
    """One governed request, returning once its result has reached the sinks."""
    assert live.server is not None
    before = len(live.recorded)
    payload = {"model": "gemma3-270m", "prompt": "hi", "stream": False, "options": options}
    async with http.post(f"{live.server.url}/api/generate", json=payload) as response:
        assert response.status == 200, await response.text()
        await response.read()
    await eventually(lambda: len(live.recorded) > before, what="the result reaching the sinks")


class TestLiveRoutes:
    async def test_status_shape(
        self, start_fake: StartFake, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Config summary, what Ollama holds now, the last decisions and the changes among them."""
        fake = await start_fake(vram_bytes=24 * GiB)
        live = Live(gpu=gpu_snapshot((20 * GiB, 24 * GiB)))
        live.server = await start_proxy(fake.url, STATIC_8192, **live.options())  # type: ignore[attr-defined]
        await generate(live, http, num_ctx=2048)
        status, body = await get_json(http, f"{live.server.url}/governor/status")
        assert status == 200
        assert set(body) == {
            "generated_ts",
            "config",
            "gpu",
            "loaded",
            "loaded_error",
            "results_source",
            "decisions",
            "predictions",
            "fits",
            "changes",
        }
        assert body["config"]["upstream"] == fake.url  # type: ignore[attr-defined]
        assert body["config"]["rules"] == [{"models": ["gemma3-270m*"], "policies": ["static"]}]
        assert body["config"]["admin_auth"] is False
        assert body["gpu"]["known"] is True and body["gpu"]["free_bytes"] == 20 * GiB
        assert body["loaded_error"] is None
        [loaded] = body["loaded"]
        assert loaded["name"] == "gemma3-270m:latest" and loaded["context_length"] == 8192
        assert loaded["spilled"] is False and loaded["size_bytes"] > 0
        [decision] = body["decisions"]
        assert decision["model"] == "gemma3-270m:latest"
        assert (decision["client_num_ctx"], decision["applied_num_ctx"]) == (2048, 8192)
        assert decision["status"] == 200 and decision["eval_tokens_per_s"] > 0
        assert body["results_source"] == "memory"
        [change] = body["changes"]
        assert change["first_seen"] and change["to_num_ctx"] == 8192 and change["after"]["requests"] == 1

    async def test_status_when_ollama_is_down(
        self, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """/api/ps failing is shown as an error; the rest of the page still answers."""
        live = Live()
        live.server = await start_proxy("http://127.0.0.1:9", PASS_THROUGH, **live.options())
        status, body = await get_json(http, f"{live.server.url}/governor/status")
        assert status == 200 and body["loaded"] == [] and body["loaded_error"]
        assert body["gpu"]["known"] is False and body["decisions"] == []

    async def test_metrics_endpoint(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """A scrape after a governed request parses back and counts it, with the GPU sample."""
        live = Live(gpu=gpu_snapshot((5 * GiB, 8 * GiB)))
        live.server = await start_proxy(fake.url, STATIC_8192, **live.options())  # type: ignore[attr-defined]
        await generate(live, http)
        async with http.get(f"{live.server.url}/governor/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
        parsed = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        labels = (("endpoint", "generate"), ("model", "gemma3-270m:latest"), ("status_class", "2xx"))
        assert parsed[("ollama_governor_requests_total", labels)] == 1
        count = (
            "ollama_governor_eval_tokens_per_second_count",
            (("model", "gemma3-270m:latest"), ("num_ctx", "8192")),
        )
        assert parsed[count] == 1
        assert parsed[("ollama_governor_gpu_free_bytes", (("gpu", "0"),))] == 5 * GiB

    async def test_series_from_memory(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Without a store the plots read the last decisions, grouped by model, oldest first."""
        live = Live()
        live.server = await start_proxy(fake.url, PASS_THROUGH, **live.options())  # type: ignore[attr-defined]
        await generate(live, http, num_ctx=2048)
        await generate(live, http, num_ctx=4096)
        status, body = await get_json(
            http, f"{live.server.url}/governor/api/series", params={"model": "gemma3-270m"}
        )
        assert status == 200 and body["results_source"] == "memory"
        [model] = body["models"]
        assert model["model"] == "gemma3-270m:latest"
        assert [p["applied_num_ctx"] for p in model["points"]] == [2048, 4096]
        assert [(c["to_num_ctx"], c["first_seen"]) for c in model["changes"]] == [(2048, True), (4096, False)]

    async def test_series_from_store(
        self, fake: FakeOllama, start_proxy: StartProxy, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """With a store, points and change markers come from SQLite; ``since`` and ``model`` filter."""
        store = ResultStore(tmp_path / "results.db", flush_interval_s=0.05)
        now = time.time()
        earlier = Ledger(store)  # an earlier run of the governor filled the store
        earlier.record(result_event(ts=now - 90_000, model="old:1b"))  # outside the default 24 h window
        for i, ctx in enumerate((4096, 4096, 8192, 8192, 16384)):
            earlier.record(
                result_event(ts=now - 500 + i * 100, applied_num_ctx=ctx, eval_tokens_per_s=40.0 - i)
            )
        earlier.record(result_event(ts=now - 50, model="llama3.1:8b"))
        assert store.flush(timeout_s=5.0)
        try:
            live = Live(store=store)
            live.server = await start_proxy(fake.url, PASS_THROUGH, **live.options())  # type: ignore[attr-defined]
            url = f"{live.server.url}/governor/api/series"
            status, body = await get_json(http, url)
            assert status == 200 and body["results_source"] == "store"
            assert [m["model"] for m in body["models"]] == ["gemma3:4b", "llama3.1:8b"]
            gemma = body["models"][0]
            assert [p["eval_tokens_per_s"] for p in gemma["points"]] == [40.0, 39.0, 38.0, 37.0, 36.0]
            assert [(c["from_num_ctx"], c["to_num_ctx"], c["first_seen"]) for c in gemma["changes"]] == [
                (None, 4096, True),
                (4096, 8192, False),
                (8192, 16384, False),
            ]
            _, since = await get_json(http, url, params={"model": "gemma3:4b", "since": str(now - 250)})
            [only] = since["models"]
            assert [p["applied_num_ctx"] for p in only["points"]] == [8192, 16384]
            assert [c["to_num_ctx"] for c in only["changes"]] == [16384]
            _, window = await get_json(http, url, params={"since": "2d"})
            assert "old:1b:latest" not in [m["model"] for m in window["models"]]
            assert "old:1b" in [m["model"] for m in window["models"]]
            status, error = await get_json(http, url, params={"since": "yesterday"})
            assert status == 400 and "since" in error["error"]
            _, status_body = await get_json(http, f"{live.server.url}/governor/status")
            newest = status_body["changes"][0]
            assert (newest["model"], newest["from_num_ctx"], newest["to_num_ctx"]) == (
                "llama3.1:8b",
                None,
                8192,
            )
            assert [d["model"] for d in status_body["decisions"]][:2] == ["llama3.1:8b", "gemma3:4b"]
            assert status_body["decisions"][0]["eval_tokens_per_s"] == 42.0  # from the store after a restart
            gemma_change = next(c for c in status_body["changes"] if c["to_num_ctx"] == 16384)
            assert gemma_change["before"]["eval_tokens_per_s_median"] == 37.5
            assert gemma_change["after"]["eval_tokens_per_s_median"] == 36.0
        finally:
            await store.aclose()

    async def test_page_is_self_contained(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """The page loads nothing from elsewhere, and its CSP would refuse it if it tried."""
        live = Live()
        server = await start_proxy(fake.url, PASS_THROUGH, **live.options())  # type: ignore[attr-defined]
        async with http.get(f"{server.url}/governor", allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/governor/"
        async with http.get(f"{server.url}/governor/") as response:
            assert response.status == 200 and response.content_type == "text/html"
            html = await response.text()
            csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "'sha256-" in csp
        assert "unsafe-inline" not in csp
        for external in ('src="http', 'href="http', 'src="//', 'href="//', "@import", "url("):
            assert external not in html
        assert len(html.splitlines()) <= 420  # one readable file; raised from 400 for the predictions panel


# --- admin authentication ----------------------------------------------------------------------------

TOKEN = "s3cret-admin-token"


@pytest.fixture
async def guarded(fake: FakeOllama) -> AsyncIterator[Running]:
    """The governor with ``admin_token`` set."""
    app = create_app(Governor.build(Config(upstream=fake.url, admin_token=TOKEN)))  # type: ignore[attr-defined]
    server = await start_app(app)
    yield server
    await server.runner.cleanup()


class TestAdminAuth:
    @pytest.mark.parametrize(
        "path", ["/governor/status", "/governor/metrics", "/governor/api/series", "/governor/nope"]
    )
    async def test_needs_the_token(self, guarded: Running, http: aiohttp.ClientSession, path: str) -> None:
        """No token or a wrong one is a 401 with a JSON error and a Bearer challenge."""
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            async with http.get(f"{guarded.url}{path}", headers=headers) as response:
                assert response.status == 401, headers
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await response.json())["error"]
        async with http.get(f"{guarded.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == (404 if path == "/governor/nope" else 200)
        async with http.get(f"{guarded.url}{path}", headers={"Authorization": f"bearer {TOKEN}"}) as response:
            assert response.status == (404 if path == "/governor/nope" else 200)

    @pytest.mark.parametrize("path", ["/governor/health", "/governor/"])
    async def test_open_paths(self, guarded: Running, http: aiohttp.ClientSession, path: str) -> None:
        """Health stays open for probes; the page holds no data and fetches with the token."""
        async with http.get(f"{guarded.url}{path}") as response:
            assert response.status == 200

    async def test_ollama_paths_untouched(
        self, guarded: Running, fake: FakeOllama, http: aiohttp.ClientSession
    ) -> None:
        """The client's own Authorization header reaches Ollama as sent, with no token needed."""
        headers = {"Authorization": "Bearer client-key-for-ollama"}
        async with http.get(f"{guarded.url}/api/tags", headers=headers) as response:
            assert response.status == 200
        [tags] = [r for r in fake.requests if r.path == "/api/tags"]
        assert tags.headers["Authorization"] == "Bearer client-key-for-ollama"

    async def test_token_read_per_request(
        self, fake: FakeOllama, start_proxy: StartProxy, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """The token is read per request, so a reload can set or rotate it."""
        server = await start_proxy(fake.url, PASS_THROUGH)  # type: ignore[attr-defined]
        url = f"{server.url}/governor/nope"
        async with http.get(url) as response:
            assert response.status == 404  # no token yet: open
        next(tmp_path.glob("config*.toml")).write_text('admin_token = "rotated"\n')
        assert reload(server.app)
        async with http.get(url) as response:
            assert response.status == 401
        async with http.get(url, headers={"Authorization": "Bearer rotated"}) as response:
            assert response.status == 404

    async def test_no_token_no_check(
        self, fake: FakeOllama, start_proxy: StartProxy, http: aiohttp.ClientSession
    ) -> None:
        """Without a token every admin path answers."""
        server = await start_proxy(fake.url, PASS_THROUGH)  # type: ignore[attr-defined]
        async with http.get(f"{server.url}/governor/status") as response:
            assert response.status == 200

    async def test_a_header_that_is_not_utf8_is_a_401(self, guarded: Running) -> None:
        """Bytes that are not UTF-8 in Authorization are a wrong token (401), never a 500."""
        host, port = guarded.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /governor/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] == b"401"


class TestWarnIfExposed:
    @pytest.mark.parametrize(
        ("host", "token", "warned"),
        [
            ("127.0.0.1", None, False),
            ("127.1.2.3", None, False),
            ("::1", None, False),
            ("[::1]", None, False),
            ("::ffff:127.0.0.1", None, False),
            ("localhost", None, False),
            ("0.0.0.0", None, True),
            ("::", None, True),
            ("192.168.1.10", None, True),
            ("gpu-box.lan", None, True),
            ("0.0.0.0", "s3cret", False),
            ("0.0.0.0", "", True),
        ],
    )
    def test_cases(self, host: str, token: str | None, warned: bool) -> None:
        """Warn exactly when the address is reachable from elsewhere and nothing guards /governor/."""
        with capture_logs() as logs:
            assert warn_if_exposed(host, token, structlog.get_logger("test")) is warned
        exposed = [e for e in logs if e["event"] == "admin_exposed"]
        assert len(exposed) == int(warned)
        if warned:
            assert exposed[0]["log_level"] == "warning" and exposed[0]["listen_host"] == host
            assert "admin_token" in exposed[0]["action"]


class TestSchedulerMetrics:
    def test_actions_and_predictions(self) -> None:
        """What Ollama did is counted per action; each checked prediction as held or surprise."""
        metrics = GovernorMetrics()
        metrics.observe(result_event(predicted_action="load", observed_action="load"))
        metrics.observe(
            result_event(
                predicted_action="load", observed_action="evict", observed_evictions=("nomic-embed-text",)
            )
        )
        metrics.observe(result_event(observed_action="reuse"))
        model = {"model": "gemma3:4b"}
        assert value(metrics, "ollama_governor_scheduler_actions_total", action="evict", **model) == 1
        assert value(metrics, "ollama_governor_scheduler_actions_total", action="reuse", **model) == 1
        assert value(metrics, "ollama_governor_predictions_total", outcome="held", **model) == 1
        assert value(metrics, "ollama_governor_predictions_total", outcome="surprise", **model) == 1
