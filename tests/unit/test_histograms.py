"""`serving.histograms` gives the same exposition as one `observe` per value."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from serving.histograms import HistogramTally, observe_all

BUCKETS = (0.001, 0.01, 0.1, 1.0)
VALUES = [0.0, 0.0005, 0.001, 0.0010001, 0.05, 0.1, 0.7, 1.0, 3.0, math.inf, -2.0]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Every sample but the `_created` timestamps (which differ by nature)."""
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                key = (sample.name, repr(sorted(sample.labels.items())))
                out[key] = sample.value
    return out


def _close_to(samples: dict[tuple[str, str], float]) -> object:
    # sums to 12 digits: adding n * v and adding v n times round differently
    return pytest.approx(samples, rel=1e-12, nan_ok=True)


def _pair(labelled: bool) -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    def one() -> tuple[CollectorRegistry, Histogram]:
        registry = CollectorRegistry()
        labels = ["model"] if labelled else []
        hist = Histogram("h_seconds", "help", labels, buckets=BUCKETS, registry=registry)
        return registry, hist.labels("m") if labelled else hist

    (reg_a, a), (reg_b, b) = one(), one()
    return reg_a, a, reg_b, b


@pytest.mark.parametrize("labelled", [False, True])
def test_observe_all_matches_observe(labelled: bool) -> None:
    reg_one, one_by_one, reg_many, many = _pair(labelled)
    for value in VALUES:
        one_by_one.observe(value)
    observe_all(many, VALUES)
    assert _samples(reg_many) == _close_to(_samples(reg_one))


@pytest.mark.parametrize("value", [0.0, 0.001, 0.002, 1.0, 7.5, -1.0, math.inf])
def test_observe_repeated_matches_observe(value: float) -> None:
    reg_one, one_by_one, reg_many, many = _pair(labelled=True)
    for _ in range(37):
        one_by_one.observe(value)
    tally = HistogramTally(many)
    tally.observe(value, 30)
    tally.observe(value, 7)
    tally.add_to(many)
    assert _samples(reg_many) == _close_to(_samples(reg_one))


def test_nothing_to_observe_changes_nothing() -> None:
    reg_untouched, _, reg, hist = _pair(labelled=False)
    observe_all(hist, [])
    HistogramTally(hist).add_to(hist)
    assert _samples(reg) == _close_to(_samples(reg_untouched))


def test_nan_is_counted_as_observe_counts_it() -> None:
    reg_one, one_by_one, reg_many, many = _pair(labelled=False)
    for value in (0.5, math.nan, math.nan):
        one_by_one.observe(value)
    observe_all(many, [0.5, math.nan])
    tally = HistogramTally(many)
    tally.observe(math.nan)
    tally.add_to(many)
    assert _samples(reg_many) == _close_to(_samples(reg_one))


def test_a_labelled_parent_is_refused_like_observe() -> None:
    registry = CollectorRegistry()
    parent = Histogram("h_seconds", "help", ["model"], buckets=BUCKETS, registry=registry)
    with pytest.raises(ValueError):
        parent.observe(0.1)
    tally = HistogramTally(parent)
    tally.observe(0.1, 3)
    with pytest.raises(ValueError):
        tally.add_to(parent)
