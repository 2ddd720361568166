"""Many observations into a prometheus-client histogram at once.

`Histogram.observe` takes one value and costs a few microseconds: a lock per
bucket touched and per sum. A batch of Kafka records or a merged batcher submit
observes dozens of values per call, often the same value many times (every
request of an executed batch has that batch's compute time). These helpers add
them with one increment per bucket touched, the same result as calling
`observe` for each value.

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


def observe_repeated(histogram: Histogram, value: float, count: int) -> None:
    """As `histogram.observe(value)` called `count` times (a labelled child or an unlabelled
    histogram)."""
    if count <= 0:
        return
    if math.isnan(value):  # observe counts NaN in the sum and in no bucket: leave it to it
        for _ in range(count):
            histogram.observe(value)
        return
    bounds: list[float] = histogram._upper_bounds
    histogram._raise_if_not_observable()
    histogram._sum.inc(value * count)
    histogram._buckets[bisect.bisect_left(bounds, value)].inc(count)


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
