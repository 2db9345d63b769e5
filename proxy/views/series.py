"""Labelled counters and histograms that cost a few additions to update on the request path.

prometheus_client's own ``Counter.inc`` and ``Histogram.observe`` take a lock for every value
they touch and check the metric's state on each call: a governed request's four observations
and three counts were a fifth of recording it. These keep plain numbers, updated and read on
the event loop only (every result is recorded and every scrape rendered there), and give
prometheus_client the same samples its own metrics would (``_total``, ``_bucket``, ``_count``,
``_sum``, ``_created``) when the registry collects them.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, utils
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["CountSeries", "CounterFamily", "HistogramFamily", "HistogramSeries"]

_go_float: Callable[[float], str] = utils.floatToGoString
"""How prometheus_client writes a bucket bound (``1.0``, ``+Inf``)."""


class CountSeries:
    """One labelled counter."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Count ``amount`` more (never negative: the callers count events)."""
        self.value += amount


class HistogramSeries:
    """One labelled histogram: a count per bucket (the last is ``+Inf``) and the sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is at least ``value``."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


S = TypeVar("S", CountSeries, HistogramSeries)


class _Family(Collector, Generic[S]):
    """A metric's series by label values, registered with ``registry`` as a collector."""

    kind = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        make: Callable[[], S],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._make: Callable[[], S] = make
        self._series: dict[tuple[str, ...], S] = {}
        registry.register(self)

    def labels(self, *values: str) -> S:
        """The series of these label values (made on first use)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = self._make()
        return series

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, self.kind)

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, self.kind)
        for values, series in list(self._series.items()):
            self._samples(metric, dict(zip(self.labelnames, values, strict=True)), series)
        yield metric

    def _samples(self, metric: Metric, labels: dict[str, str], series: S) -> None:
        raise NotImplementedError


class CounterFamily(_Family[CountSeries]):
    """A labelled counter, exposed as prometheus_client's ``Counter`` exposes one."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry):
        super().__init__(name, documentation, labelnames, registry, CountSeries)

    def _samples(self, metric: Metric, labels: dict[str, str], series: CountSeries) -> None:
        metric.add_sample(f"{self.name}_total", labels, series.value)
        metric.add_sample(f"{self.name}_created", labels, series.created)


class HistogramFamily(_Family[HistogramSeries]):
    """A labelled histogram with fixed buckets, exposed as prometheus_client's ``Histogram``."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        bounds = tuple(float(bound) for bound in buckets)
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing, not {buckets}")
        self.bounds = bounds
        self._le = tuple(_go_float(bound) for bound in (*bounds, float("inf")))
        super().__init__(name, documentation, labelnames, registry, lambda: HistogramSeries(bounds))

    def _samples(self, metric: Metric, labels: dict[str, str], series: HistogramSeries) -> None:
        cumulative = 0
        for le, count in zip(self._le, series.counts, strict=True):
            cumulative += count
            metric.add_sample(f"{self.name}_bucket", {**labels, "le": le}, cumulative)
        metric.add_sample(f"{self.name}_count", labels, cumulative)
        metric.add_sample(f"{self.name}_sum", labels, series.sum)
        metric.add_sample(f"{self.name}_created", labels, series.created)
