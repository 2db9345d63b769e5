"""Prometheus metrics for ``GET /governor/metrics``, fed by the result events.

``GovernorMetrics.observe`` is a ledger sink, so it runs on the request path: it does a
few dict lookups and float additions per event and builds no label strings for a series it has
already seen (label children are cached per label tuple).

Label cardinality is bounded on purpose. Model names and ``num_ctx`` values come from clients,
and a client that sends a thousand made-up names must not grow the metrics a thousand series per
metric: after ``max_models`` distinct models (``max_num_ctx`` distinct contexts) further values
are counted under the label value ``_other``.

Every metric lives in the instance's own ``CollectorRegistry``, never the global one, so two
apps (tests, reloads) never collide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.exposition import choose_encoder, generate_latest

from policies.context import GpuSnapshot
from proxy.govern.record import GovernedRequest
from proxy.names import canonical_model
from proxy.views.series import CounterFamily, CountSeries, HistogramFamily, HistogramSeries

__all__ = ["CONTENT_TYPE", "OTHER", "GovernorMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What ``render()`` returns: the classic text format every Prometheus version reads."""

OTHER = "_other"
"""The label value that stands for every model (or num_ctx) past the cardinality cap."""

NO_NUM_CTX = "default"
"""The ``num_ctx`` label of requests that ran with Ollama's default context (none was sent)."""

_MS_PER_S = 1000.0

REQUEST_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Ollama's ``total_duration``: from a short warm reply to a long generation behind a reload."""

TTFB_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""The proxy's time to first byte: milliseconds when warm, the whole load time when not."""

LOAD_SECONDS_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Reloads only (they start at ``RELOAD_THRESHOLD_MS``); a spilled 27B load takes minutes."""

TOKENS_PER_S_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0)
"""From a spilled model's ~1 tok/s to a small model on a fast GPU."""

_Child = TypeVar("_Child")


class _CappedLabel:
    """Passes the first ``limit`` distinct values through and maps the rest to ``_other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


class _Children(dict[tuple[str, ...], _Child]):
    """A cache of label children: one ``labels()`` call (and its string work) per label tuple."""

    def __init__(self, make: Callable[[tuple[str, ...]], _Child]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: tuple[str, ...]) -> _Child:
        child = self[key] = self.make(key)
        return child


def _status_class(status: object) -> str:
    """``2xx``, ``4xx``, ``5xx``...; ``unknown`` when the event has no status."""
    return f"{status // 100}xx" if isinstance(status, int) and not isinstance(status, bool) else "unknown"


class GovernorMetrics:
    """The governor's metrics: request counts and latencies, load time and tokens/s per num_ctx,
    changes, spills, policy and upstream errors, and GPU memory.

    Metric names (all prefixed ``ollama_governor_``):

    * ``requests_total{model,endpoint,status_class}``: governed requests.
    * ``request_duration_seconds{model,endpoint}``: Ollama's ``total_duration``.
    * ``time_to_first_byte_seconds{model,endpoint}``: the proxy's own time to the first byte.
    * ``load_duration_seconds{model,num_ctx}``: Ollama's ``load_duration`` of requests that
      reloaded the model (a warm request's few milliseconds would drown the cost of a load).
    * ``eval_tokens_per_second{model,num_ctx}`` / ``prompt_tokens_per_second{model,num_ctx}``.
    * ``changes_total{model}``: changes of the applied ``num_ctx``/``keep_alive`` pair, as the
      ledger detects them (``proxy.ledger.changes``; a model's first pair is not a change).
    * ``spills_total{model}``: loads that landed partly in system RAM (reloaded and spilled).
    * ``spilled_requests_total{model}``: requests that ran while the model was spilled.
    * ``policy_errors_total{model}``: policies that failed, timed out or returned junk.
    * ``scheduler_actions_total{model,action}``: what Ollama's scheduler did (reuse, load, reload,
      evict, spill), read from ``/api/ps`` before and after each request.
    * ``predictions_total{model,outcome}``: the scheduler model's predictions, ``held`` or
      ``surprise`` (accuracy = held / (held + surprise)).
    * ``upstream_errors_total{model,endpoint}``: Ollama unreachable (502) or a broken stream.
    * ``gpu_free_bytes{gpu}`` / ``gpu_total_bytes{gpu}``: per device, from the last GPU sample;
      absent when the GPUs are unknown (``gpu_known`` is then 0), because a made-up 0 or NaN
      would read as "no free memory" on a dashboard or trip an alert.
    """

    def __init__(self, *, max_models: int = 100, max_num_ctx: int = 64, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=self.registry)
        self._model = _CappedLabel(max_models)
        self._num_ctx = _CappedLabel(max_num_ctx)
        self._canonical: dict[str, str] = {}
        self._gpu_indexes: frozenset[str] = frozenset()
        ns = "ollama_governor"
        reg = self.registry

        requests = CounterFamily(
            f"{ns}_requests", "Governed requests", ["model", "endpoint", "status_class"], registry=reg
        )
        duration = HistogramFamily(
            f"{ns}_request_duration_seconds",
            "Ollama's total_duration of governed requests",
            ["model", "endpoint"],
            registry=reg,
            buckets=REQUEST_SECONDS_BUCKETS,
        )
        ttfb = HistogramFamily(
            f"{ns}_time_to_first_byte_seconds",
            "Time from the request reaching the proxy to the first byte sent back",
            ["model", "endpoint"],
            registry=reg,
            buckets=TTFB_SECONDS_BUCKETS,
        )
        upstream_errors = CounterFamily(
            f"{ns}_upstream_errors",
            "Requests that failed upstream: Ollama unreachable (502) or the stream broke",
            ["model", "endpoint"],
            registry=reg,
        )
        load = HistogramFamily(
            f"{ns}_load_duration_seconds",
            "Ollama's load_duration of requests that (re)loaded the model",
            ["model", "num_ctx"],
            registry=reg,
            buckets=LOAD_SECONDS_BUCKETS,
        )
        eval_rate = HistogramFamily(
            f"{ns}_eval_tokens_per_second",
            "Generation speed (eval_count / eval_duration)",
            ["model", "num_ctx"],
            registry=reg,
            buckets=TOKENS_PER_S_BUCKETS,
        )
        prompt_rate = HistogramFamily(
            f"{ns}_prompt_tokens_per_second",
            "Prompt processing speed (prompt_eval_count / prompt_eval_duration)",
            ["model", "num_ctx"],
            registry=reg,
            buckets=(*TOKENS_PER_S_BUCKETS, 1000.0, 2500.0, 5000.0),
        )
        changes = CounterFamily(
            f"{ns}_changes", "Changes of the applied num_ctx or keep_alive", ["model"], registry=reg
        )
        spills = CounterFamily(
            f"{ns}_spills", "Loads detected as spilled to system RAM", ["model"], registry=reg
        )
        spilled_requests = CounterFamily(
            f"{ns}_spilled_requests",
            "Requests that ran while the model was spilled to system RAM",
            ["model"],
            registry=reg,
        )
        policy_errors = CounterFamily(
            f"{ns}_policy_errors",
            "Policies that raised, timed out or returned something other than a Decision",
            ["model"],
            registry=reg,
        )
        actions = CounterFamily(
            f"{ns}_scheduler_actions",
            "What Ollama's scheduler did for a request: reuse, load, reload, evict or spill",
            ["model", "action"],
            registry=reg,
        )
        predictions = CounterFamily(
            f"{ns}_predictions",
            "Scheduler predictions checked against what Ollama did: held or surprise",
            ["model", "outcome"],
            registry=reg,
        )
        self._actions: _Children[CountSeries] = _Children(lambda key: actions.labels(*key))
        self._predictions: _Children[CountSeries] = _Children(lambda key: predictions.labels(*key))
        self._gpu_free = Gauge(
            "gpu_free_bytes",
            "Free GPU memory per device, from the last sample",
            ["gpu"],
            namespace=ns,
            registry=reg,
        )
        self._gpu_total = Gauge(
            "gpu_total_bytes",
            "Total GPU memory per device, from the last sample",
            ["gpu"],
            namespace=ns,
            registry=reg,
        )
        self._gpu_known = Gauge(
            "gpu_known",
            "1 when the last GPU sample read at least one device, else 0",
            namespace=ns,
            registry=reg,
        )

        def by_endpoint(key: tuple[str, ...]) -> tuple[HistogramSeries, HistogramSeries, CountSeries]:
            return duration.labels(*key), ttfb.labels(*key), upstream_errors.labels(*key)

        def by_num_ctx(key: tuple[str, ...]) -> tuple[HistogramSeries, HistogramSeries, HistogramSeries]:
            return load.labels(*key), eval_rate.labels(*key), prompt_rate.labels(*key)

        def by_model(key: tuple[str, ...]) -> tuple[CountSeries, CountSeries, CountSeries, CountSeries]:
            return (
                changes.labels(*key),
                spills.labels(*key),
                spilled_requests.labels(*key),
                policy_errors.labels(*key),
            )

        self._requests: _Children[CountSeries] = _Children(lambda key: requests.labels(*key))
        self._by_endpoint: _Children[tuple[HistogramSeries, HistogramSeries, CountSeries]] = _Children(
            by_endpoint
        )
        self._by_num_ctx: _Children[tuple[HistogramSeries, HistogramSeries, HistogramSeries]] = _Children(
            by_num_ctx
        )
        self._by_model: _Children[tuple[CountSeries, CountSeries, CountSeries, CountSeries]] = _Children(
            by_model
        )
        self._gpu_known.set(0)

    # --- labels -------------------------------------------------------------------------------

    def _model_label(self, model: object) -> str:
        """The capped, canonical (``name:latest``) model label."""
        name = model if isinstance(model, str) and model else "unknown"
        label = self._canonical.get(name)
        if label is None:
            label = self._model(canonical_model(name))
            if label != OTHER:  # only remember names that got a series of their own
                self._canonical[name] = label
        return label

    def _num_ctx_label(self, num_ctx: object) -> str:
        if num_ctx is None:
            return NO_NUM_CTX
        if isinstance(num_ctx, bool) or not isinstance(num_ctx, int):
            return "unknown"
        return self._num_ctx(str(num_ctx))

    # --- input --------------------------------------------------------------------------------

    def observe(self, record: GovernedRequest) -> None:
        """Count one finished request (a ledger sink). Unknown figures are simply not observed (the
        record's figures are finite numbers or None: ``Answer.of`` made them so)."""
        model = self._model_label(record.model)
        endpoint = record.endpoint or "unknown"
        self._requests[(model, endpoint, _status_class(record.status))].inc()
        duration, ttfb, upstream_errors = self._by_endpoint[(model, endpoint)]
        if record.total_ms is not None:
            duration.observe(record.total_ms / _MS_PER_S)
        if record.ttfb_ms is not None:
            ttfb.observe(record.ttfb_ms / _MS_PER_S)
        if record.error or record.status == 502:
            upstream_errors.inc()

        num_ctx = self._num_ctx_label(record.applied_num_ctx)
        load, eval_rate, prompt_rate = self._by_num_ctx[(model, num_ctx)]
        if record.reloaded is True and record.load_ms is not None:
            load.observe(record.load_ms / _MS_PER_S)
        if record.eval_tokens_per_s is not None:
            eval_rate.observe(record.eval_tokens_per_s)
        if record.prompt_tokens_per_s is not None:
            prompt_rate.observe(record.prompt_tokens_per_s)

        change = record.change
        if record.spilled is True or record.policy_errors or (change is not None and not change.first_seen):
            changes, spills, spilled_requests, policy_error_count = self._by_model[(model,)]
            if record.spilled is True:
                spilled_requests.inc()
                if record.reloaded is True:  # a spill happens when a model loads
                    spills.inc()
            if record.policy_errors:
                policy_error_count.inc(len(record.policy_errors))
            if change is not None and not change.first_seen and model != OTHER:
                changes.inc()
        if record.observed_action is not None:
            self._actions[(model, record.observed_action)].inc()
        held = record.prediction_held
        if held is not None:
            self._predictions[(model, "held" if held else "surprise")].inc()

    def set_gpu(self, snapshot: GpuSnapshot | None) -> None:
        """Publish the latest GPU sample; with no sample, or an unknown one, the per-device series
        disappear and ``gpu_known`` is 0."""
        devices = snapshot.devices if snapshot is not None else ()
        indexes = frozenset(str(device.index) for device in devices)
        if indexes != self._gpu_indexes:
            self._gpu_free.clear()
            self._gpu_total.clear()
            self._gpu_indexes = indexes
        for device in devices:
            self._gpu_free.labels(str(device.index)).set(device.free_bytes)
            self._gpu_total.labels(str(device.index)).set(device.total_bytes)
        self._gpu_known.set(1 if devices else 0)

    # --- output -------------------------------------------------------------------------------

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def render_for(self, accept_header: str | None) -> tuple[bytes, str]:
        """Every metric in the format the scraper's ``Accept`` header asks for (text or
        OpenMetrics), with its content type."""
        encoder, content_type = choose_encoder(accept_header or "")
        return encoder(self.registry), content_type
