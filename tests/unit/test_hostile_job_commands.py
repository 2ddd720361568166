"""Records on `training-jobs` written to break the training agent, through its real loop with
stand-ins for kafka-python's consumer and producer (no broker, no Ray): each is refused with
one `rejected` event small enough to produce, its offset is committed, and the agent keeps
serving the records after it. And spec documents `train submit` cannot read (alias bombs,
deep nesting, numbers int() refuses): each a ConfigError, at once."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    UnknownProducerIdError,
)
from kafka.structs import TopicPartition

from headrace.errors import ConfigError
from streams.job_agent import JobAgent, JobAgentConfig
from streams.job_messages import EVENTS_TOPIC, JOBS_TOPIC, TrainingEvent
from training.job_spec import parse_job_spec
from training.loop import EpochRecord
from training.recipe import TrainReport

MAX_REQUEST_SIZE = 1_048_576  # kafka-python's default max_request_size
HUGE = 2_000_000


class _Sent:
    def __init__(self, size: int) -> None:
        self._size = size

    def get(self, timeout: float | None = None) -> None:
        if self._size > MAX_REQUEST_SIZE:  # what kafka-python raises for such a record
            raise MessageSizeTooLargeError(f"the message is {self._size} bytes")


class _Producer:
    sent: list[tuple[str, bytes | None, bytes]] = []

    def __init__(self, **_config: Any) -> None:
        pass

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> _Sent:
        self.sent.append((topic, key, value))
        return _Sent(len(key or b"") + len(value))

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


class _Record:
    def __init__(self, offset: int, value: bytes | None) -> None:
        self.offset, self.value = offset, value


class _Consumer:
    """Hands over `records` in one poll, then asks the agent to stop."""

    records: list[bytes | None] = []
    stop = threading.Event()
    committed: dict[TopicPartition, int] = {}

    def __init__(self, *_topics: str, **_config: Any) -> None:
        self._polled = False

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[_Record]]:
        if self._polled:
            self.stop.set()
            return {}
        self._polled = True
        tp = TopicPartition(JOBS_TOPIC, 0)
        return {tp: [_Record(i, value) for i, value in enumerate(self.records)]}

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(JOBS_TOPIC, 0)}

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.committed.update({tp: meta.offset for tp, meta in offsets.items()})

    def close(self, autocommit: bool = True) -> None:
        pass


def _fake_kafka(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    records: list[bytes],
    producer: type[_Producer] = _Producer,
    consumer: type[_Consumer] = _Consumer,
) -> JobAgentConfig:
    """Replace the agent's Kafka clients by fakes: `consumer` reads `records`, `producer`
    sends into `_Producer.sent`; nothing sent, committed or stopped yet. The agent's config."""
    monkeypatch.setattr("kafka.KafkaProducer", producer)
    monkeypatch.setattr("kafka.KafkaConsumer", consumer)
    monkeypatch.setattr(_Producer, "sent", [])
    monkeypatch.setattr(_Consumer, "records", records)
    monkeypatch.setattr(_Consumer, "stop", threading.Event())
    monkeypatch.setattr(_Consumer, "committed", {})
    return JobAgentConfig(bootstrap="unused:9092", repository=tmp_path, runs_dir=tmp_path)


def _command(job_id: str, **fields: Any) -> bytes:
    return json.dumps({"command": "submit", "job_id": job_id, **fields}).encode()


HOSTILE = {
    "unknown field of megabytes": _command("a", **{"x" * HUGE: 1}),
    "100,000 unknown fields": _command("b", **{f"field{i}": 1 for i in range(100_000)}),
    "model name of megabytes": _command("c", spec={"model": "m" * HUGE}),
    "repository name of megabytes": _command("d", spec={"name": "n" * HUGE}),
    "spec key of megabytes": _command("e", spec={"k" * HUGE: 1}),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_command_gets_a_rejected_event_that_can_be_produced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Before: the `rejected` event quoted the record whole (2 to 4.7 MB); the producer
    refused it (MessageSizeTooLargeError), the exception ended `headrace train agent`
    (exit 1), and since the command's offset was never committed the agent ended again on it
    after every restart (reproduced on the embedded broker), running no job."""
    config = _fake_kafka(monkeypatch, tmp_path, [HOSTILE[name], _command("next", cancel=1)])
    agent = JobAgent(config, train=lambda *_a: None, available_cpus=2)
    agent.run(_Consumer.stop)
    events = [TrainingEvent.model_validate_json(v) for t, _k, v in _Producer.sent]
    assert {t for t, _k, _v in _Producer.sent} == {EVENTS_TOPIC}
    assert [e.event for e in events] == ["rejected", "rejected"]  # the next record too
    assert all(len(v) < MAX_REQUEST_SIZE // 100 for _t, _k, v in _Producer.sent)
    assert events[0].reason is not None and events[0].reason.endswith("more characters cut)")
    assert _Consumer.committed == {TopicPartition(JOBS_TOPIC, 0): 2}


def _laughs(levels: int) -> str:
    """YAML whose last anchor stands for 9**levels strings ('billion laughs')."""
    lines = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"  l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "anchors:\n" + "\n".join(lines) + "\n"


SPEC_DOCUMENTS = {
    "billion laughs": (_laughs(9) + "model: lenet5\n", "stands for more than 100,000 values"),
    "laughs in a search space": (
        _laughs(9) + "kind: tune\ntune:\n  search_space:\n    optimizer: "
        "{_type: choice, _value: *l8}\n",
        "stands for more than 100,000 values",
    ),
    "deep YAML": ("model: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests too deeply"),
    "deep JSON": ('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests too deeply"),
    "huge YAML number": ("epochs: " + "9" * 5000 + "\n", "more than 4,300 digits"),
    "huge JSON number": ('{"epochs": ' + "9" * 5000 + "}", "more than 4,300 digits"),
}


@pytest.mark.parametrize("name", list(SPEC_DOCUMENTS))
def test_a_spec_document_that_cannot_be_read_is_a_config_error(name: str) -> None:
    """Before (`headrace train submit FILE`, `tune --search-space FILE`): RecursionError and
    ValueError tracebacks (exit 1); the alias bomb was refused only for its unknown key, and
    in a search space it ran for ever (2.7 GB after 30 s: each of 9**8 choices validated)."""
    text, expected = SPEC_DOCUMENTS[name]
    with pytest.raises(ConfigError, match=expected):
        parse_job_spec(text, source="spec.yaml")


class _CommitTimesOutOnce(_Consumer):
    """The broker away while the agent commits: the first commit times out."""

    failures = 1

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise KafkaTimeoutError("Timeout after waiting for 30 secs.")
        super().commit(offsets)


def test_a_commit_the_broker_does_not_answer_is_made_again_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a commit that timed out (the broker away for longer than the commit's 30 s)
    ended `headrace train agent` with kafka-python's KafkaTimeoutError traceback."""
    config = _fake_kafka(
        monkeypatch,
        tmp_path,
        [_command("bad", spec={"model": "nope"})],
        consumer=_CommitTimesOutOnce,
    )
    agent = JobAgent(config, train=lambda *_a: None, available_cpus=2)
    agent.run(_Consumer.stop)
    assert agent.consumer.failures == 0  # it did time out once
    assert _Consumer.committed == {TopicPartition(JOBS_TOPIC, 0): 1}


class _BrokerAwayProducer(_Producer):
    def flush(self, timeout: float | None = None) -> None:
        raise KafkaTimeoutError("Timeout waiting for future")


def test_a_stop_while_the_broker_is_away_ends_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: SIGTERM while the broker was frozen ended `headrace train agent` (after about
    90 s) with the KafkaTimeoutError traceback of the producer's last flush, exit 1."""
    config = _fake_kafka(monkeypatch, tmp_path, [], producer=_BrokerAwayProducer)
    JobAgent(config, train=lambda *_a: None, available_cpus=2).run(_Consumer.stop)


class _PollRefusedOnce(_Consumer):
    """The broker killed under the agent: kafka-python 3's poll raised its connection error
    (a coordinator lookup whose metadata refresh was refused), seen with `headrace train
    agent` in tests/integration/test_broker_outage.py."""

    failures = 1

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[_Record]]:
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("KafkaConnectionError: 111 ECONNREFUSED")
        return super().poll(timeout_ms)


def test_a_poll_refused_by_a_broker_gone_away_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the error ended `headrace train agent` with a kafka-python traceback, though
    the broker came back seconds later. Now the agent polls again (its broker watch says
    Kafka is away) and goes on with the commands once the broker answers."""
    config = _fake_kafka(
        monkeypatch, tmp_path, [_command("bad", spec={"model": "nope"})], consumer=_PollRefusedOnce
    )
    agent = JobAgent(config, train=lambda *_a: None, available_cpus=2)
    agent.run(_Consumer.stop)
    assert agent.consumer.failures == 0  # it was refused once
    assert _Consumer.committed == {TopicPartition(JOBS_TOPIC, 0): 1}
    assert [topic for topic, _key, _value in _Producer.sent] == [EVENTS_TOPIC]  # rejected


class _Failed:
    is_done = True

    def __init__(self, error: KafkaError) -> None:
        self._error = error

    def get(self, timeout: float | None = None) -> None:
        raise self._error


class _ForgettingProducer(_Producer):
    """kafka-python 3's producer after its broker forgot it (the embedded broker restarted
    on the same port; producer-state expiry on Kafka): an idempotent one (its default) fails
    the next record with UnknownProducerIdError, is refused a new producer id and then fails
    every record with that fatal error. Without idempotence nothing is asked of the broker's
    memory, and records are delivered (sent again, if need be, once the broker is back)."""

    configs: list[dict[str, Any]] = []
    remembered = 3  # records delivered before the restart: accepted, started, epoch 1

    def __init__(self, **config: Any) -> None:
        self.configs.append(config)
        self._idempotent = config.get("enable_idempotence", True)
        self._fatal: KafkaError | None = None

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> Any:
        if self._idempotent and len(self.sent) >= self.remembered:
            error = self._fatal or UnknownProducerIdError()
            self._fatal = KafkaError(
                "Unexpected error in InitProducerIdResponse: [Error -1] UnknownError"
            )
            return _Failed(error)
        return super().send(topic, key, value)


class _UntilTheJobEnds(_Consumer):
    """Hands over the records, then polls (as kafka-python waits `timeout_ms`) until each is
    committed, and asks the agent to stop."""

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[_Record]]:
        if not self._polled:
            return super().poll(timeout_ms)
        if self.committed.get(TopicPartition(JOBS_TOPIC, 0)) == len(self.records):
            self.stop.set()
        else:
            self.stop.wait(timeout_ms / 1000)
        return {}


def test_a_job_whose_broker_forgot_the_agents_producer_still_ends_with_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: after the embedded broker was SIGKILLed and started again on its port, the
    agent's idempotent producer failed the job's next event (UnknownProducerIdError), and
    every later one ('InitProducerId ... UnknownError'): the job thread died with a traceback,
    its `failed` event lost as well, and the command was committed with no final event."""
    job = _command("through-restart", spec={"model": "lenet5", "epochs": 2})
    config = _fake_kafka(
        monkeypatch, tmp_path, [job], producer=_ForgettingProducer, consumer=_UntilTheJobEnds
    )
    monkeypatch.setattr(_ForgettingProducer, "configs", [])

    def train(config: Any, on_epoch: Any, _stop: Any) -> TrainReport:
        for epoch in (1, 2):
            on_epoch(EpochRecord(epoch=epoch, train_loss=1.0, train_accuracy=0.5, val_loss=1.0,
                                 val_accuracy=0.5, seconds=0.1, samples_per_s=100.0))  # fmt: skip
        return TrainReport(
            model="lenet5", name="n", dataset="digits", version=None, test_accuracy=0.5,
            test_balanced_accuracy=0.5, test_loss=1.0, val_loss=1.0, epochs_run=2, best_epoch=2,
            stopped_early=False, train_seconds=0.2, onnx_max_abs_diff=None,
            run_dir=str(config.runs_dir), repository=None,
        )  # fmt: skip

    JobAgent(config, train=train, available_cpus=2).run(_Consumer.stop)
    events = [TrainingEvent.model_validate_json(v) for _t, _k, v in _Producer.sent]
    assert [(e.event, e.epoch) for e in events] == [
        ("accepted", None), ("started", None), ("epoch", 1), ("epoch", 2), ("succeeded", None),
    ]  # fmt: skip
    assert _Consumer.committed == {TopicPartition(JOBS_TOPIC, 0): 1}
    # a record sent again after a lost acknowledgement stays next to its first copy
    assert _ForgettingProducer.configs[0]["max_in_flight_requests_per_connection"] == 1


class _GivesUpProducer(_Producer):
    """Kafka away for longer than the producer tries (its delivery timeout): every record
    after the job's first epoch is given up."""

    delivered = 3  # accepted, started, epoch 1

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> Any:
        if len(self.sent) >= self.delivered:
            return _Failed(KafkaTimeoutError("Expiring 1 record(s) for training-events-0"))
        return super().send(topic, key, value)


class _UntilTheJobThreadEnded(_Consumer):
    """Hands over the records, then polls until the loop has gone round once more after the
    job's thread (`job_thread`, set by the job) ended, and asks the agent to stop."""

    job_thread: threading.Thread | None = None
    rounds_after = 0

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[_Record]]:
        if not self._polled:
            return super().poll(timeout_ms)
        thread = _UntilTheJobThreadEnded.job_thread
        if thread is not None:
            thread.join(timeout_ms / 1000)
            if not thread.is_alive():
                _UntilTheJobThreadEnded.rounds_after += 1
        if _UntilTheJobThreadEnded.rounds_after >= 2:  # reaped and committed in between
            self.stop.set()
        return {}


def test_a_job_whose_last_event_kafka_never_took_is_not_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: with the broker away for longer than the producer tries, the job's epoch event
    and then its `failed` event were given up, the job thread died with a traceback, and its
    command was committed: the job had no final event and never ran again. Now the agent
    says so, and the command stays uncommitted (read again when the agent starts again)."""
    job = _command("never-told", spec={"model": "lenet5", "epochs": 2})
    config = _fake_kafka(
        monkeypatch, tmp_path, [job], producer=_GivesUpProducer, consumer=_UntilTheJobThreadEnded
    )
    monkeypatch.setattr(_UntilTheJobThreadEnded, "job_thread", None)
    monkeypatch.setattr(_UntilTheJobThreadEnded, "rounds_after", 0)

    def train(config: Any, on_epoch: Any, _stop: Any) -> TrainReport:
        _UntilTheJobThreadEnded.job_thread = threading.current_thread()
        for epoch in (1, 2):
            on_epoch(EpochRecord(epoch=epoch, train_loss=1.0, train_accuracy=0.5, val_loss=1.0,
                                 val_accuracy=0.5, seconds=0.1, samples_per_s=100.0))  # fmt: skip
        raise AssertionError("the second epoch's event was delivered")

    JobAgent(config, train=train, available_cpus=2).run(_Consumer.stop)
    events = [TrainingEvent.model_validate_json(v) for _t, _k, v in _Producer.sent]
    assert [e.event for e in events] == ["accepted", "started", "epoch"]
    assert _Consumer.committed == {TopicPartition(JOBS_TOPIC, 0): 0}  # the command stays open
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "job never-told ended without its final event: Kafka at unused:9092 did not take it "
        "(KafkaTimeoutError: Expiring 1 record(s) for training-events-0); its command stays "
        "uncommitted and runs again when the agent is started again (from its checkpoint, or "
        "reported from its saved report)"
    ]
