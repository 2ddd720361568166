"""The stream consumer asks its thread for records with a short timeout, whatever Faust asks."""

from __future__ import annotations

import asyncio
from typing import Any

from streams.faust_app import GETMANY_TIMEOUT_S, new_app


class RecordingThread:
    """Stands in for Faust's consumer thread: answers at once, remembering the timeouts."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, float]] = []

    async def getmany(self, active_partitions: Any, timeout: float) -> dict[Any, list[Any]]:
        self.calls.append((active_partitions, timeout))
        return {}


def test_a_request_for_records_never_waits_longer_than_the_short_timeout() -> None:
    consumer: Any = new_app("test-getmany", ["kafka://127.0.0.1:1"]).consumer  # never started
    thread = RecordingThread()
    consumer._thread = thread
    partitions = {"requests-0"}

    async def scenario() -> None:
        await consumer._getmany(partitions, 1.0)  # what Faust's fetcher loop asks for
        await consumer._getmany(partitions, GETMANY_TIMEOUT_S / 4)

    asyncio.run(scenario())
    assert thread.calls == [(partitions, GETMANY_TIMEOUT_S), (partitions, GETMANY_TIMEOUT_S / 4)]
    assert GETMANY_TIMEOUT_S <= 0.05  # a request made under backpressure returns soon
