"""`streams.broker_watch`: one warning when Kafka stops answering a worker, one when it is back,
and the worker's /metrics saying so; on a clock the test moves and stand-in aiokafka and
kafka-python clients."""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
from aiokafka.errors import NodeNotReadyError, RequestTimedOutError
from kafka.errors import KafkaConnectionError
from kafka.future import Future
from prometheus_client import generate_latest

from serving.metrics import ServingMetrics
from streams.broker_watch import BrokerWatch, check_until, watch_client, watch_kafka_python
from streams.job_metrics import TrainingMetrics
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


def _aiokafka_join() -> object:
    from aiokafka.protocol.group import JoinGroupRequest

    return JoinGroupRequest("g", 10_000, 10_000, "", None, "consumer", [])


def _kafka_python_join() -> object:
    from kafka.protocol.consumer import JoinGroupRequest

    return JoinGroupRequest(
        group_id="g", session_timeout_ms=10_000, rebalance_timeout_ms=3_600_000, member_id="",
        group_instance_id=None, protocol_type="consumer", protocols=[], max_version=7,
    )  # fmt: skip


@pytest.mark.parametrize(("join", "outage"), [(True, False), (False, True)])
def test_a_joingroup_the_group_holds_is_no_outage_other_requests_held_as_long_are(
    join: bool, outage: bool
) -> None:
    """A healthy broker holds a JoinGroup until the group's other members join: up to an hour
    for an agent whose fellow agents are busy with jobs. A minute of it, with nothing else
    asked, is no outage; any other request left a minute without an answer is one."""
    now = [0.0]
    watch = BrokerWatch("k:9092", "stream worker", silence_s=15.0, clock=lambda: now[0])
    joined = asyncio.Event()

    class HeldClient:
        async def send(self, node_id: int, request: object) -> str:
            await joined.wait()
            return "answered"

    async def scenario() -> None:
        client = HeldClient()
        watch_client(client, watch)
        request = _aiokafka_join() if join else "fetch"
        held = asyncio.create_task(client.send(111, request))
        await asyncio.sleep(0)  # the request is sent and held
        now[0] = 60.0
        watch.check()
        assert watch.reachable is not outage and (watch.unanswered_s() == 60.0) is outage
        joined.set()
        assert await held == "answered"

    asyncio.run(scenario())
    now[0] = 61.0
    watch.check()
    assert watch.reachable and watch.unanswered_s() == 0.0
    assert watch.outages == int(outage)


# -- the training agent's kafka-python clients -------------------------------------------------


class _Request:
    """A stand-in kafka-python request: produce with acks=0 expects no response."""

    def __init__(self, name: str, expects_response: bool = True) -> None:
        self.name, self.expects_response = name, expects_response

    def expect_response(self) -> bool:
        return self.expects_response


class _Manager:
    """A stand-in `KafkaConnectionManager`: `send` returns a kafka-python future, settled
    later by the test as the network thread would (or at once, for acks=0)."""

    def __init__(self) -> None:
        self.pending: list[Future] = []

    def send(self, request: _Request, node_id: int | None = None) -> Future:
        future = Future()
        if not request.expect_response():
            return future.success(None)
        self.pending.append(future)
        return future


class _KafkaPythonClient:
    """Where kafka-python 3 keeps its manager: a consumer's `_client._manager`, a producer's
    `_sender._client._manager`."""

    def __init__(self, producer: bool) -> None:
        client = SimpleNamespace(_manager=_Manager())
        self.manager: _Manager = client._manager
        if producer:
            self._sender = SimpleNamespace(_client=client)
        else:
            self._client = client


def test_the_agents_kafka_python_requests_tell_whether_kafka_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The training agent's consumer and producer (kafka-python) report to one watch: a
    refused or unanswered request is no answer, any response is one, and /metrics shows
    `training_broker_*`."""
    now = [0.0]
    watch = BrokerWatch("k:9092", "training agent", silence_s=5.0, clock=lambda: now[0])
    consumer, producer = _KafkaPythonClient(producer=False), _KafkaPythonClient(producer=True)
    for client in (consumer, producer):
        watch_kafka_python(client, watch)
    metrics = TrainingMetrics()
    metrics.watch_broker(watch)

    def scrape() -> dict[str, float]:
        text = generate_latest(metrics.registry).decode()
        return {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("training_broker_")
        }

    heartbeat = consumer.manager.send(_Request("heartbeat"))
    assert watch.unanswered_s() == 0.0  # asked at 0 s
    heartbeat.success("a response with an error code is still an answer")
    producer.manager.send(_Request("produce acks=0", expects_response=False))
    assert watch.unanswered_s() == 0.0 and watch.reachable
    with caplog.at_level(logging.INFO, logger="streams.broker_watch"):
        fetch = consumer.manager.send(_Request("fetch"))
        now[0] = 3.0
        fetch.failure(KafkaConnectionError("111 ECONNREFUSED"))
        produce = producer.manager.send(_Request("produce"))
        now[0] = 6.0
        watch.check()
        assert not watch.reachable
        assert scrape() == {
            "training_broker_reachable": 0.0,
            "training_broker_unanswered_seconds": 6.0,
            "training_broker_outages_total": 1.0,
        }
        produce.success("acknowledged")  # the broker is back
        now[0] = 7.0
        watch.check()
    assert [r.getMessage() for r in caplog.records] == [
        "Kafka at k:9092 has not answered the training agent for 6 s (last error: "
        "KafkaConnectionError: 111 ECONNREFUSED). It keeps its place and goes on by itself "
        "once Kafka answers; check the broker.",
        "Kafka at k:9092 answers again after 6 s away",
    ]
    assert scrape()["training_broker_reachable"] == 1.0


def test_the_agents_joingroup_held_by_busy_fellow_agents_is_no_outage() -> None:
    """The agent's JoinGroup (kafka-python's own request) may be held for as long as another
    agent of the group trains without polling; its answer still counts as one, and a request
    of another kind asked meanwhile is still watched."""
    now = [0.0]
    watch = BrokerWatch("k:9092", "training agent", silence_s=15.0, clock=lambda: now[0])
    consumer = _KafkaPythonClient(producer=False)
    watch_kafka_python(consumer, watch)
    join = consumer.manager.send(_kafka_python_join())  # type: ignore[arg-type]
    now[0] = 600.0
    watch.check()
    assert watch.reachable and watch.unanswered_s() == 0.0
    metadata = consumer.manager.send(_Request("metadata"))
    now[0] = 616.0
    watch.check()
    assert not watch.reachable and watch.unanswered_s() == 16.0
    join.success("joined")
    metadata.success("metadata")
    now[0] = 617.0
    watch.check()
    assert watch.reachable and watch.outages == 1


def test_check_until_checks_on_its_own_thread_until_stopped() -> None:
    """The agent's loop blocks in kafka-python's `poll`: the watch is checked elsewhere."""
    checked = threading.Event()

    class _Watch(BrokerWatch):
        def check(self) -> None:
            checked.set()

    stop = threading.Event()
    thread = check_until(stop, _Watch("k:9092", "training agent"))
    assert checked.wait(10), "never checked"
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
