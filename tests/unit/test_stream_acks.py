"""The stream worker acks a batch's records only after the broker acknowledged its outcomes,
while the agent already runs the next batch; failures and stops leave records unacked.

Faust's events are replaced by small fakes that count references as Faust's messages do
(one per stream, the final ack when the count reaches zero); the producer hands out
delivery futures that the test settles."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streams import app as stream_app
from streams import delivery
from streams.app import StreamWorker
from streams.config import StreamWorkerConfig
from tests.unit.test_stream_worker_parts import FakeBackend, request_value


class FakeMessage:
    def __init__(self, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset = "inference-requests", 0, offset
        self.tp = ("inference-requests", 0)
        self.key, self.value, self.timestamp = None, value, 0.0
        self.headers: list[tuple[str, bytes]] = []
        self.refcount, self.acked = 1, False  # delivered to one stream

    def incref(self) -> None:
        self.refcount += 1


class FakeEvent:
    def __init__(self, message: FakeMessage, consumer: Any) -> None:
        self.message = message
        self.app = SimpleNamespace(consumer=consumer)

    def ack(self) -> bool:
        self.message.refcount -= 1
        if self.message.refcount == 0:
            self.message.acked = True
            self.app.consumer.unacked.discard(self.message)
        return self.message.acked


class ManualProducer:
    """Queues every send; the test decides when (and how) the broker answers."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, asyncio.Future[None]]] = []

    async def send(self, topic: str, key: bytes, value: bytes, *rest: object) -> asyncio.Future:
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((key, answer))
        return answer

    def acknowledge(self, error: Exception | None = None) -> int:
        pending = [answer for _, answer in self.sent if not answer.done()]
        for answer in pending:
            answer.set_exception(error) if error else answer.set_result(None)
        return len(pending)


def new_worker(
    tmp_path: Path, fatal: list[BaseException], concurrency: int = 1
) -> tuple[StreamWorker, ManualProducer]:
    config = StreamWorkerConfig(
        repository=tmp_path, bootstrap="127.0.0.1:9", concurrency=concurrency
    )
    worker = StreamWorker(config, FakeBackend(), on_fatal=fatal.append)
    producer = ManualProducer()
    worker.app.producer = producer  # type: ignore[assignment]
    return worker, producer


def batch(worker: StreamWorker, consumer: Any, *offsets: int) -> list[Any]:
    events = []
    for offset in offsets:
        message = FakeMessage(offset, request_value(f"r{offset}", [1.0, 2.0, 3.0, 4.0]))
        consumer.unacked.add(message)
        worker.gate.received(message.tp, offset)  # the agent's stream processor does this
        events.append(FakeEvent(message, consumer))
    return events


def faust_acks(events: list[Any]) -> None:
    """What `take_events` does once the agent asks for the next batch."""
    for event in events:
        event.ack()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_records_are_acked_after_their_outcomes_while_the_next_batch_runs(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        worker, producer = new_worker(tmp_path, [])
        consumer = SimpleNamespace(unacked=set())
        first, second = batch(worker, consumer, 0, 1), batch(worker, consumer, 2, 3)

        await asyncio.wait_for(worker._handle_taken(first), 1)  # returns before the broker
        faust_acks(first)
        assert len(producer.sent) == 2
        assert not any(e.message.acked for e in first)  # outcomes not acknowledged yet

        running = asyncio.ensure_future(worker._handle_taken(second))
        await settle()
        assert len(producer.sent) == 4  # the next batch ran and was handed to the producer
        assert not running.done()  # but it waits: one batch at a time awaits acknowledgements
        assert not any(e.message.acked for e in first + second)

        producer.acknowledge()
        await asyncio.wait_for(running, 1)
        faust_acks(second)
        await settle()
        assert all(e.message.acked for e in first + second)
        assert consumer.unacked == set() and worker.gate.pending() == 0 and not worker.unconfirmed

    asyncio.run(scenario())


def test_outcomes_that_cannot_be_produced_leave_their_records_unacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "PRODUCE_BACKOFF_S", 0.0)

    async def scenario() -> None:
        fatal: list[BaseException] = []
        worker, producer = new_worker(tmp_path, fatal)
        consumer = SimpleNamespace(unacked=set())
        first = batch(worker, consumer, 0, 1)
        await worker._handle_taken(first)
        faust_acks(first)
        for _ in range(delivery.PRODUCE_ATTEMPTS):
            await settle()
            producer.acknowledge(RuntimeError("broker gone"))
        await settle()
        assert not worker.unconfirmed
        assert not any(e.message.acked for e in first)  # never committed: read again later
        assert consumer.unacked == set()  # and not waited for by Faust's stop
        assert len(fatal) == 1 and isinstance(fatal[0], delivery.ProduceFailed)

        later = batch(worker, consumer, 2)
        await worker._handle_taken(later)  # after a fatal error nothing more is processed
        faust_acks(later)
        assert len(producer.sent) == 2 * delivery.PRODUCE_ATTEMPTS
        assert not later[0].message.acked and len(fatal) == 1

    asyncio.run(scenario())


def test_at_the_stop_unacknowledged_batches_stay_unacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_app, "STOP_GRACE_S", 0.05)

    async def scenario() -> None:
        worker, producer = new_worker(tmp_path, [])
        consumer = SimpleNamespace(unacked=set())
        events = batch(worker, consumer, 0, 1)
        await worker._handle_taken(events)
        faust_acks(events)
        await worker._settle_unconfirmed()  # the broker never answers
        assert not worker.unconfirmed
        assert not any(e.message.acked for e in events) and consumer.unacked == set()

    asyncio.run(scenario())


def test_an_actor_never_waits_for_a_batch_that_waits_for_a_record_the_actor_holds(
    tmp_path: Path,
) -> None:
    """Concurrency 2, a backlog: actor A's stream has taken offset 5 off the shared queue (the
    gate has it) but holds it in its take buffer until A's agent body returns, while actor B's
    batches 6-7 and 8-9 were acknowledged and wait for offset 5. A's body must not wait for
    B's batches then: it waited for the oldest unconfirmed batch (6-7) and hung for ever."""

    async def scenario() -> None:
        worker, producer = new_worker(tmp_path, [], concurrency=2)
        consumer = SimpleNamespace(unacked=set())
        early = batch(worker, consumer, 0, 1, 2, 3, 4)  # actor A's batch
        taken_by_a = batch(worker, consumer, 5)  # in A's take buffer, not yet yielded
        b1, b2 = batch(worker, consumer, 6, 7), batch(worker, consumer, 8, 9)
        await asyncio.wait_for(worker._handle_taken(b1), 1)  # actor B
        faust_acks(b1)
        await asyncio.wait_for(worker._handle_taken(b2), 1)
        faust_acks(b2)
        running = asyncio.ensure_future(worker._handle_taken(early))  # actor A
        await settle()
        assert producer.acknowledge() == 9  # the broker answers every outcome
        await asyncio.wait_for(running, 1)  # A may go on and yield offset 5 next
        faust_acks(early)
        await settle()
        assert all(e.message.acked for e in early)
        assert not any(e.message.acked for e in b1 + b2)  # offset 5 has no outcome yet

        await asyncio.wait_for(worker._handle_taken(taken_by_a), 1)
        faust_acks(taken_by_a)
        producer.acknowledge()
        await settle()
        assert all(e.message.acked for e in taken_by_a + b1 + b2)
        assert consumer.unacked == set() and worker.gate.pending() == 0
        assert not worker.unconfirmed and not worker.unanswered

    asyncio.run(scenario())


def test_an_agent_held_back_by_unanswered_outcomes_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stream_app, "ANSWER_WAIT_WARN_S", 0.02)

    async def scenario() -> None:
        worker, producer = new_worker(tmp_path, [])
        consumer = SimpleNamespace(unacked=set())
        first, second = batch(worker, consumer, 0, 1), batch(worker, consumer, 2)
        await worker._handle_taken(first)
        faust_acks(first)
        running = asyncio.ensure_future(worker._handle_taken(second))

        async def warned() -> None:
            while not caplog.records:  # the broker does not answer
                await asyncio.sleep(0.01)

        with caplog.at_level(logging.WARNING, logger="streams.app"):
            await asyncio.wait_for(warned(), 2)
        assert not running.done()
        producer.acknowledge()
        await asyncio.wait_for(running, 1)

    asyncio.run(scenario())
    message = caplog.records[0].getMessage()
    assert message.startswith("2 outcomes not acknowledged by the broker after 0 s; ")
    assert "2 batches (3 outcomes) await its answers" in message
