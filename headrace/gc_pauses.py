"""Short garbage-collector pauses for long-running processes (server, stream worker).

Before it serves, a server or stream worker imports numpy, ONNX Runtime, grpc,
Faust and pydantic and loads its models: hundreds of thousands of objects that
live as long as the process. CPython's oldest-generation collection walks all
of them every time; under load on the build machine that stopped the event
loop for 30 to 65 ms a few times a minute, which every request in flight then
waited for. `gc.freeze()` moves what is alive at that point into a permanent
generation the collector no longer walks. Objects made later (requests, a
reloaded model version) are collected as before, but the youngest generation
is collected after 10,000 new objects instead of CPython's 700: under load,
records and requests in flight survive young collections and were walked again
in each. In the stream worker at about 6,000 LeNet-5 records/s that cut the
collector's time from 0.47 to 0.10 s per 60,000 records, about 3.5% of the
worker's core (docs/performance.md).

Load generators (the benchmarks) need more: a pause of theirs while they time
requests is counted as the system's latency. `collector_paused` keeps the
collector off for a bounded measurement window.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

YOUNG_GENERATION_THRESHOLD = 10_000  # new container objects between young collections


def prepare_for_serving() -> None:
    """Collect once, exempt every surviving object from later collections, and collect the
    youngest generation less often (`YOUNG_GENERATION_THRESHOLD`)."""
    gc.collect()
    gc.freeze()
    young, middle, oldest = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_GENERATION_THRESHOLD), middle, oldest)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection inside the block (one full collection just before it).

    For a window of bounded allocation only (a timed benchmark row); what is made
    inside it is collected as usual once the block ends.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
