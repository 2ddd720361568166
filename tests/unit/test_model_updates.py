"""`streams.model_updates.follow_model_updates` when Kafka is away: it tries again instead of
raising (a raising Faust task crashed the whole stream worker); a stand-in aiokafka consumer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiokafka
import pytest
from aiokafka.errors import KafkaConnectionError

from streams import model_updates
from streams.job_messages import ModelUpdate
from streams.model_updates import follow_model_updates


class _Record:
    def __init__(self, value: bytes) -> None:
        self.value = value


class _Consumer:
    """Fails to start `failures` times (Kafka away), then yields `records` and waits."""

    failures = 2
    starts = 0
    stops = 0
    records: list[bytes] = []

    def __init__(self, *topics: str, **options: Any) -> None:
        self.topics = topics

    async def start(self) -> None:
        type(self).starts += 1
        if type(self).starts <= type(self).failures:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")

    async def stop(self) -> None:
        type(self).stops += 1

    def __aiter__(self) -> AsyncIterator[_Record]:
        return self._records()

    async def _records(self) -> AsyncIterator[_Record]:
        for value in self.records:
            yield _Record(value)
        await asyncio.Event().wait()  # no more records: wait until cancelled


def test_a_broker_away_at_the_start_is_tried_again_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the first `KafkaConnectionError` ended the follower, hence the worker."""
    update = ModelUpdate(model="lenet", version=2)
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", _Consumer)
    monkeypatch.setattr(_Consumer, "starts", 0)
    monkeypatch.setattr(_Consumer, "stops", 0)
    monkeypatch.setattr(model_updates, "RETRY_S", 0.01, raising=False)
    monkeypatch.setattr(_Consumer, "records", [b"not json", update.model_dump_json().encode()])
    seen: list[ModelUpdate] = []
    done = asyncio.Event()

    async def on_update(got: ModelUpdate) -> None:
        seen.append(got)
        done.set()

    async def run() -> None:
        task = asyncio.ensure_future(follow_model_updates("k:9092", on_update))
        updated = asyncio.ensure_future(done.wait())
        await asyncio.wait({task, updated}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        ended = task.done() and not task.cancelled() and task.exception()
        task.cancel()
        updated.cancel()
        await asyncio.gather(task, updated, return_exceptions=True)
        assert not ended, f"the follower ended: {ended!r}"

    with caplog.at_level(logging.INFO, logger="streams.model_updates"):
        asyncio.run(run())
    assert seen == [update]
    assert _Consumer.starts == 3
    assert _Consumer.stops == 3  # the failed starts' consumers too ('Unclosed AIOKafkaConsumer')
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith(
        "not following model-updates (KafkaConnectionError: Unable to bootstrap from"
    )
    assert messages[1:] == [
        "following model-updates again",
        "ignored a record on model-updates that is not a model update",
        "model update: lenet version 2",
    ]
