"""The request path's counters and histograms expose what prometheus_client's own would."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from proxy.views.series import CounterFamily, HistogramFamily

BUCKETS = (0.05, 0.5, 1.0, 10.0)
VALUES = (0.01, 0.05, 0.2, 0.5, 0.7, 3.0, 10.0, 99.0)


def without_created(text: bytes) -> str:
    """The exposition with the ``_created`` timestamps (the time each series was made) blanked."""
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text.decode())


def pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)


class TestSameExposition:
    @pytest.mark.parametrize("render", [generate_latest, generate_openmetrics])
    def test_histogram(self, render: object) -> None:
        theirs, ours = pair()
        native = Histogram("x_seconds", "doc", ["model"], registry=theirs, buckets=BUCKETS)
        lean = HistogramFamily("x_seconds", "doc", ["model"], registry=ours, buckets=BUCKETS)
        for value in VALUES:
            native.labels("a").observe(value)
            lean.labels("a").observe(value)
        native.labels("b").observe(2.0)
        lean.labels("b").observe(2.0)
        assert callable(render)
        assert without_created(render(ours)) == without_created(render(theirs))

    @pytest.mark.parametrize("render", [generate_latest, generate_openmetrics])
    def test_counter(self, render: object) -> None:
        theirs, ours = pair()
        native = Counter("x_requests", "doc", ["model", "status"], registry=theirs)
        lean = CounterFamily("x_requests", "doc", ["model", "status"], registry=ours)
        for family in (native, lean):
            family.labels("a", "2xx").inc()
            family.labels("a", "2xx").inc()
            family.labels("b", "5xx").inc(3)
        assert callable(render)
        assert without_created(render(ours)) == without_created(render(theirs))

    def test_unobserved_family_has_help_and_type_only(self) -> None:
        theirs, ours = pair()
        Histogram("x_seconds", "doc", ["model"], registry=theirs, buckets=BUCKETS)
        HistogramFamily("x_seconds", "doc", ["model"], registry=ours, buckets=BUCKETS)
        assert generate_latest(ours) == generate_latest(theirs)


class TestBuckets:
    def test_a_value_on_a_bound_counts_in_that_bucket(self) -> None:
        registry = CollectorRegistry()
        family = HistogramFamily("x", "doc", [], registry=registry, buckets=BUCKETS)
        family.labels().observe(0.5)
        assert registry.get_sample_value("x_bucket", {"le": "0.05"}) == 0
        assert registry.get_sample_value("x_bucket", {"le": "0.5"}) == 1
        assert registry.get_sample_value("x_bucket", {"le": "+Inf"}) == 1
        assert registry.get_sample_value("x_sum") == 0.5

    def test_buckets_must_increase(self) -> None:
        with pytest.raises(ValueError, match="increasing"):
            HistogramFamily("x", "doc", [], registry=CollectorRegistry(), buckets=(1.0, 0.5))

    def test_label_values_must_match_the_names(self) -> None:
        family = CounterFamily("x", "doc", ["model"], registry=CollectorRegistry())
        with pytest.raises(ValueError, match="takes labels"):
            family.labels("a", "b")
