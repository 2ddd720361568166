"""Many observations into a prometheus-client histogram at once.

`Histogram.observe` takes one value and costs a few microseconds: a lock per
bucket touched and per sum. `observe_all` adds many values (a batch of Kafka
records) with one increment per bucket touched, the same result as calling
`observe` for each value. `HistogramTally` counts observations in plain Python
(the same value many times over, when requests share a batch's timings) until
`add_to` moves them into the histogram, for instance when the registry is
scraped: a request path that updates several histograms pays no lock per bucket
and sum.

prometheus-client (0.20 and later) has no public call for this, so they use the
histogram child's `_upper_bounds`, `_buckets` and `_sum`; the unit tests compare
their exposition with `observe`'s, so a change there fails a test, not a scrape.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import Histogram


def observe_all(histogram: Histogram, values: Iterable[float]) -> None:
    """As `histogram.observe(v)` for each value, with one increment per bucket touched."""
    bounds: list[float] = histogram._upper_bounds
    per_bucket: Tally[int] = Tally()
    total = 0.0
    for value in values:
        if math.isnan(value):
            histogram.observe(value)
            continue
        per_bucket[bisect.bisect_left(bounds, value)] += 1
        total += value
    if not per_bucket:
        return
    histogram._raise_if_not_observable()
    histogram._sum.inc(total)
    buckets = histogram._buckets
    for index, count in per_bucket.items():
        buckets[index].inc(count)


class HistogramTally:
    """Observations of one histogram not yet added to it, counted per bucket.

    Not thread-safe: its owner serialises `observe` and `add_to` (one lock per request
    instead of one per bucket and sum)."""

    __slots__ = ("_bounds", "_counts", "_sum", "_nans")

    def __init__(self, histogram: Histogram) -> None:
        self._bounds: list[float] = histogram._upper_bounds
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._nans = 0

    def observe(self, value: float, count: int = 1) -> None:
        """As `histogram.observe(value)` called `count` times, once added."""
        if value != value:  # NaN: observe counts it in the sum and in no bucket
            self._nans += count
            return
        self._counts[bisect.bisect_left(self._bounds, value)] += count
        self._sum += value * count

    def add_to(self, histogram: Histogram) -> None:
        """Add what was counted to `histogram` (the one it was made for)."""
        for _ in range(self._nans):
            histogram.observe(math.nan)
        if not any(self._counts):
            return
        histogram._raise_if_not_observable()
        histogram._sum.inc(self._sum)
        buckets = histogram._buckets
        for index, count in enumerate(self._counts):
            if count:
                buckets[index].inc(count)
