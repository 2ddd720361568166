"""`streams.broker_watch`: one warning when Kafka stops answering a worker, one when it is back,
and the worker's /metrics saying so; on a clock the test moves and a stand-in aiokafka client."""

from __future__ import annotations

import asyncio
import logging
from contextlib import nullcontext

import pytest
from aiokafka.errors import NodeNotReadyError, RequestTimedOutError
from prometheus_client import generate_latest

from serving.metrics import ServingMetrics
from streams.broker_watch import BrokerWatch, watch_client
from streams.metrics import StreamMetrics


class _Client:
    """A stand-in `AIOKafkaClient`: `send` answers, or raises what `failure` holds."""

    def __init__(self) -> None:
        self.failure: Exception | None = None

    async def send(self, node_id: int, request: object) -> str:
        if self.failure is not None:
            raise self.failure
        return f"answer to {request}"


def _scrape(metrics: StreamMetrics) -> dict[str, float]:
    text = generate_latest(metrics.serving.registry).decode()
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("stream_broker_")
    }


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    watch = BrokerWatch("kafka-1:9092", "stream worker", silence_s=15.0, clock=lambda: now[0])
    client = _Client()
    watch_client(client, watch)
    metrics = StreamMetrics(ServingMetrics(lambda: []))
    metrics.watch_broker(watch)

    async def send() -> None:
        with pytest.raises(NodeNotReadyError) if client.failure else nullcontext():
            assert await client.send(111, "heartbeat") == "answer to heartbeat"

    def tick(seconds: float) -> None:
        for _ in range(int(seconds)):
            now[0] += 1.0
            asyncio.run(send())
            watch.check()

    with caplog.at_level(logging.INFO, logger="streams.broker_watch"):
        tick(30)  # answered all along: nothing to say
        assert caplog.records == [] and watch.reachable
        client.failure = NodeNotReadyError("Attempt to send a request to node 111")
        tick(14)
        assert caplog.records == [] and watch.reachable  # not yet silent for 15 s
        assert _scrape(metrics)["stream_broker_unanswered_seconds"] == 13.0
        tick(46)  # an hour would say no more
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert not watch.reachable
        assert _scrape(metrics) == {
            "stream_broker_reachable": 0.0,
            "stream_broker_unanswered_seconds": 59.0,
            "stream_broker_outages_total": 1.0,
        }
        client.failure = None
        tick(5)
    first, back = (r.getMessage() for r in caplog.records)
    assert first == (
        "Kafka at kafka-1:9092 has not answered the stream worker for 15 s (last error: "
        "NodeNotReadyError: Attempt to send a request to node 111). It keeps its place and "
        "goes on by itself once Kafka answers; check the broker."
    )
    assert back == "Kafka at kafka-1:9092 answers again after 60 s away"
    assert _scrape(metrics) == {
        "stream_broker_reachable": 1.0,
        "stream_broker_unanswered_seconds": 0.0,
        "stream_broker_outages_total": 1.0,
    }


def test_requests_that_hang_count_as_unanswered_and_error_answers_as_answers() -> None:
    """A frozen broker answers nothing and raises nothing until a request times out; an
    answer carrying an error code is still an answer."""
    now = [0.0]
    watch = BrokerWatch("k:9092", "ingestion worker", silence_s=5.0, clock=lambda: now[0])
    watch.asked()  # a fetch and a heartbeat sent, neither answered
    now[0] = 2.0
    watch.asked()
    now[0] = 5.5
    watch.check()
    assert not watch.reachable and watch.outages == 1
    watch.failed(RequestTimedOutError())
    now[0] = 30.0
    watch.check()
    assert watch.outages == 1  # one outage, however long
    watch.answered()
    now[0] = 31.0
    watch.check()
    assert watch.reachable and watch.unanswered_s() == 0.0


def test_a_request_held_shorter_than_the_threshold_is_no_outage() -> None:
    """A JoinGroup may be held by a healthy broker for up to the rebalance timeout (10 s)."""
    now = [0.0]
    watch = BrokerWatch("k:9092", "stream worker", clock=lambda: now[0])
    watch.asked()
    now[0] = 10.5
    watch.check()
    watch.answered()
    now[0] = 40.0
    watch.check()
    assert watch.reachable and watch.outages == 0
    with pytest.raises(ValueError):
        BrokerWatch("k:9092", "stream worker", silence_s=0)
