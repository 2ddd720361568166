"""Exactly-once parts without a broker: the commit gate, offset runs, InitProducerId v3, config."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.protocol.transaction import InitProducerIdRequest_v0
from faust.types import TP

from headrace.commands.options import build_config
from headrace.errors import ConfigError
from serving.metrics import ServingMetrics
from streams import init_producer_id
from streams.commit_gate import CommitGate
from streams.config import StreamWorkerConfig
from streams.exactly_once import TransactionalOutcomes
from streams.metrics import StreamMetrics
from streams.offsets import OffsetGate, Position, offset_runs

# -- CommitGate ----------------------------------------------------------------------------


def test_commit_waits_for_batches_inside_and_holds_new_ones_back() -> None:
    async def scenario() -> list[str]:
        gate, order = CommitGate(), []
        inside, release = asyncio.Event(), asyncio.Event()

        async def batch(name: str, hold: asyncio.Event | None = None) -> None:
            async with gate.producing():
                order.append(f"{name} in")
                inside.set()
                if hold is not None:
                    await hold.wait()
                order.append(f"{name} out")

        async def commit() -> None:
            async with gate.committing() as allowed:
                assert allowed
                order.append("commit")

        first = asyncio.create_task(batch("a", release))
        await inside.wait()
        committing = asyncio.create_task(commit())
        await asyncio.sleep(0.01)
        second = asyncio.create_task(batch("b"))  # arrives while the commit waits
        await asyncio.sleep(0.01)
        assert order == ["a in"]
        release.set()
        await asyncio.wait_for(asyncio.gather(first, committing, second), 1)
        return order

    assert asyncio.run(scenario()) == ["a in", "a out", "commit", "b in", "b out"]


def test_closed_gate_refuses_every_commit() -> None:
    async def scenario() -> list[bool]:
        gate = CommitGate()
        answers = []
        async with gate.committing() as allowed:
            answers.append(allowed)
        gate.close("a batch failed")
        async with gate.committing() as allowed:
            answers.append(allowed)
        assert gate.closed == "a batch failed"
        return answers

    assert asyncio.run(scenario()) == [True, False]


def test_suspended_gate_skips_commits_until_resumed() -> None:
    async def scenario() -> list[bool]:
        gate, answers = CommitGate(), []
        gate.suspend()  # a rebalance: the worker aborted the open transactions
        async with gate.committing() as allowed:
            answers.append(allowed)
        assert gate.suspended
        gate.resume()  # the new assignment's transactions have begun
        async with gate.committing() as allowed:
            answers.append(allowed)
        return answers

    assert asyncio.run(scenario()) == [False, True]


def test_commits_get_in_between_overlapping_batches() -> None:
    async def scenario() -> int:
        gate, commits, stop = CommitGate(), 0, asyncio.Event()

        async def actor() -> None:  # batches back to back, always one inside
            while not stop.is_set():
                async with gate.producing():
                    await asyncio.sleep(0.002)

        async def committer() -> None:
            nonlocal commits
            for _ in range(5):
                async with gate.committing():
                    commits += 1
                await asyncio.sleep(0.001)
            stop.set()

        await asyncio.wait_for(asyncio.gather(actor(), actor(), committer()), 2)
        return commits

    assert asyncio.run(scenario()) == 5


# -- offset runs and the wait before producing ---------------------------------------------


def test_offset_runs_split_partitions_and_gaps() -> None:
    positions: list[Position] = [("p0", 1), ("p1", 7), ("p0", 2), ("p0", 50), ("p1", 8)]
    assert offset_runs(positions) == [[0, 2], [1, 4], [3]]
    assert offset_runs([]) == []


def test_blocking_ignores_the_batchs_own_unfinished_records() -> None:
    gate = OffsetGate()
    for offset in range(10, 20):
        gate.received("p0", offset)
    assert not gate.blocking([("p0", o) for o in range(10, 20)])
    gate.received("p0", 9)
    assert gate.blocking([("p0", o) for o in range(10, 20)])


def test_interleaved_batches_of_two_actors_all_commit() -> None:
    """Actor A took offsets 1 and 50 of p0, actor B 10-20, 30 is still in B's buffer: waiting per
    run lets 1 go, then 10-20, then 30, then 50 (a whole-batch wait deadlocked here)."""

    async def scenario() -> list[int]:
        gate, commit_gate, acked = OffsetGate(), CommitGate(), list[int]()
        a: list[Position] = [("p0", 1), ("p0", 50)]
        b: list[Position] = [("p0", o) for o in range(10, 21)]
        later: list[Position] = [("p0", 30)]
        for tp, offset in sorted(a + b + later, key=lambda p: p[1]):
            gate.received(tp, offset)

        async def run(own: Sequence[Position]) -> None:
            await gate.wait_earlier(own)
            async with commit_gate.producing():
                await asyncio.sleep(0)  # produce
                gate.finished(own)
                acked.extend(offset for _, offset in own)

        async def batch(positions: list[Position]) -> None:
            await asyncio.gather(*(run([positions[i] for i in r]) for r in offset_runs(positions)))

        async def actor_b() -> None:
            await batch(b)
            await batch(later)  # its next batch, only after the current one

        await asyncio.wait_for(asyncio.gather(batch(a), actor_b()), 1)
        return acked

    assert asyncio.run(scenario()) == [1, *range(10, 21), 30, 50]


# -- TransactionalOutcomes -----------------------------------------------------------------


def test_a_transactional_batch_observes_how_long_its_outcomes_took_to_be_acknowledged() -> None:
    """`stream_outcome_ack_seconds` stayed empty under exactly-once (only the at-least-once path
    observed it), so the dashboard's ack panel showed nothing for such workers."""
    metrics = StreamMetrics(ServingMetrics())
    app = SimpleNamespace(
        conf=SimpleNamespace(id="g"),
        assignor=SimpleNamespace(group_for_topic=lambda topic: 0),
        consumer_generation_id=1,
        producer=object(),
        consumer=object(),
    )
    produced: list[list[str]] = []

    async def produce(producer: object, outcomes: Sequence[Any], ids: Sequence[str]) -> None:
        await asyncio.sleep(0.02)  # the broker's acknowledgements
        produced.append(list(ids))

    def event() -> Any:
        message = SimpleNamespace(generation_id=1, ack=lambda consumer: None)
        return SimpleNamespace(message=message)

    positions: list[Position] = [(TP("requests", 0), 0), (TP("requests", 0), 1),
                                 (TP("requests", 1), 7)]  # fmt: skip
    outcomes: list[Any] = [object()] * len(positions)
    gate = OffsetGate()
    for tp, offset in positions:
        gate.received(tp, offset)
    transactions = TransactionalOutcomes(cast(Any, app), gate, produce, metrics)
    asyncio.run(transactions.commit_batch(outcomes, positions, [event() for _ in positions]))
    assert sorted(produced) == [["g-0-0", "g-0-0"], ["g-0-1"]]
    registry = metrics.serving.registry
    assert registry.get_sample_value("stream_outcome_ack_seconds_count") == 1  # one batch
    assert 0.02 <= (registry.get_sample_value("stream_outcome_ack_seconds_sum") or 0) < 1
    assert gate.pending() == 0


# -- InitProducerId v3 ---------------------------------------------------------------------


def test_init_producer_id_uses_v3_when_the_broker_has_it() -> None:
    request = init_producer_id.InitProducerIdRequest("tx-1", 60_000)
    v3 = request.prepare({22: (0, 5)})
    assert isinstance(v3, init_producer_id.InitProducerIdRequestV3)
    assert (v3.producer_id, v3.producer_epoch) == (-1, -1)
    assert v3.FLEXIBLE_VERSION
    # compact string: length + 1 as a varint, then the id; then timeout, id, epoch, no tags
    assert v3.encode() == b"\x05tx-1" + (60_000).to_bytes(4, "big") + b"\xff" * 10 + b"\x00"
    old = request.prepare({22: (0, 2)})
    assert isinstance(old, InitProducerIdRequest_v0)


def test_install_swaps_aiokafkas_request_builder_and_back() -> None:
    was = init_producer_id.installed()
    try:
        init_producer_id.install()
        assert aiokafka_sender.InitProducerIdRequest is init_producer_id.InitProducerIdRequest
        init_producer_id.uninstall()
        assert aiokafka_sender.InitProducerIdRequest is init_producer_id.AIOKAFKA_BUILDER
    finally:
        (init_producer_id.install if was else init_producer_id.uninstall)()


# -- config --------------------------------------------------------------------------------


def test_processing_guarantee_defaults_to_at_least_once_and_checks_names() -> None:
    base = {"repository": "repo", "bootstrap": "localhost:9092"}
    assert StreamWorkerConfig.model_validate(base).processing_guarantee == "at_least_once"
    chosen = StreamWorkerConfig.model_validate({**base, "processing_guarantee": "exactly_once"})
    assert chosen.processing_guarantee == "exactly_once"
    with pytest.raises(ConfigError, match="processing_guarantee"):
        build_config(StreamWorkerConfig, **base, processing_guarantee="exactly-once")
