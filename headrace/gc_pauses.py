"""Short garbage-collector pauses for long-running processes (server, stream worker).

Before it serves, a server or stream worker imports numpy, ONNX Runtime, grpc,
Faust and pydantic and loads its models: hundreds of thousands of objects that
live as long as the process. CPython's oldest-generation collection walks all
of them every time; under load on the build machine that stopped the event
loop for 30 to 65 ms a few times a minute, which every request in flight then
waited for. `gc.freeze()` moves what is alive at that point into a permanent
generation the collector no longer walks. Objects made later (requests, a
reloaded model version) are collected as before.

Load generators (the benchmarks) need more: a pause of theirs while they time
requests is counted as the system's latency. `collector_paused` keeps the
collector off for a bounded measurement window.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


def freeze_startup_objects() -> None:
    """Collect once, then exempt every surviving object from later collections."""
    gc.collect()
    gc.freeze()


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
