"""Short garbage-collector pauses for long-running processes (server, stream worker).

Before it serves, a server or stream worker imports numpy, ONNX Runtime, grpc,
Faust and pydantic and loads its models: hundreds of thousands of objects that
live as long as the process. CPython's oldest-generation collection walks all
of them every time; under load on the build machine that stopped the event
loop for 30 to 65 ms a few times a minute, which every request in flight then
waited for. `gc.freeze()` moves what is alive at that point into a permanent
generation the collector no longer walks. Objects made later (requests, a
reloaded model version) are collected as before.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect once, then exempt every surviving object from later collections."""
    gc.collect()
    gc.freeze()
