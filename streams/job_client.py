"""The user's side of training jobs: submit and cancel commands, read and follow job events."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping

from pydantic import ValidationError

from streams.job_messages import EVENTS_TOPIC, JOBS_TOPIC, JobCommand, TrainingEvent
from streams.results import consume
from training.job_spec import TrainingJobSpec, spec_to_json


def _send(bootstrap: str, command: JobCommand) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(
            JOBS_TOPIC, key=command.job_id.encode(), value=command.model_dump_json().encode()
        ).get(timeout=30)
    finally:
        producer.close(timeout=30)


def submit_job(bootstrap: str, spec: TrainingJobSpec) -> str:
    """Put a validated spec on `training-jobs` (acknowledged by the broker); returns the job id."""
    import json

    payload = json.loads(spec_to_json(spec))
    payload.pop("job_id", None)
    _send(bootstrap, JobCommand(command="submit", job_id=spec.job_id, spec=payload))
    return spec.job_id


def cancel_job(bootstrap: str, job_id: str) -> None:
    """Ask the agent to cancel a queued or running job."""
    _send(bootstrap, JobCommand(command="cancel", job_id=job_id))


def was_submitted(bootstrap: str, job_id: str, idle_s: float = 1.0) -> bool:
    """Whether `training-jobs` holds a submit of `job_id` (read from the beginning)."""
    for _, value in consume(bootstrap, [JOBS_TOPIC], follow=False, idle_s=idle_s):
        try:
            command = JobCommand.model_validate_json(value or b"")
        except ValidationError:
            continue
        if command.command == "submit" and command.job_id == job_id:
            return True
    return False


def read_events(
    bootstrap: str, job_id: str | None = None, follow: bool = False, idle_s: float = 2.0
) -> Iterator[TrainingEvent]:
    """Events from the beginning (of one job, or all): those sent before the reading began,
    ending after `idle_s` without one (see `_events_so_far`); following, all until closed.

    A record the agent's producer sent again (its acknowledgement lost: the broker frozen past
    the request timeout) follows its first copy, the same bytes (the event's `at` included):
    it is read once. The agent's producer is not idempotent (see `streams.job_agent`)."""
    last: dict[str, bytes | None] = {}  # each job's latest record
    values = (
        (value for _, value in consume(bootstrap, [EVENTS_TOPIC], follow=True))
        if follow
        else _events_so_far(bootstrap, idle_s)
    )
    for value in values:
        try:
            event = TrainingEvent.model_validate_json(value or b"")
        except ValidationError:
            continue  # not ours; the topic is shared with other producers
        if last.get(event.job_id) == value:
            continue
        last[event.job_id] = value
        if job_id is None or event.job_id == job_id:
            yield event


def _events_so_far(bootstrap: str, idle_s: float) -> Iterator[bytes | None]:
    """The events topic as it was when the reading began: a partition is left at its first
    record stamped later (by its producer's clock), and the reading ends once every partition
    is or after `idle_s` without an earlier record. Reading until `idle_s` of quiet alone
    never ended while a job sent epochs more often than that: `train cancel` and `train
    status` then waited for the job to end."""
    from kafka import KafkaConsumer

    began_ms = time.time() * 1000
    consumer = KafkaConsumer(
        EVENTS_TOPIC,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            for partition, records in consumer.poll(timeout_ms=100).items():
                for record in records:
                    if record.timestamp > began_ms:
                        consumer.pause(partition)
                        break
                    quiet_since = time.monotonic()
                    yield record.value
            assigned = consumer.assignment()
            if assigned and consumer.paused() >= assigned:
                return
    finally:
        consumer.close()


def new_events(
    bootstrap: str, job_id: str | None, already: Mapping[str, int]
) -> Iterator[TrainingEvent]:
    """Following from the beginning, the events after the first `already[job]` of each job
    (those a reader has shown): a job's events keep their order, all keyed by its id."""
    seen: Counter[str] = Counter()
    for event in read_events(bootstrap, job_id, follow=True):
        seen[event.job_id] += 1
        if seen[event.job_id] > already.get(event.job_id, 0):
            yield event


def no_events_reason(bootstrap: str, job_id: str | None) -> str:
    """What to tell a reader who found no events (of `job_id`, or at all)."""
    if job_id is None:
        return "no training events yet; is `headrace train agent` running?"
    if was_submitted(bootstrap, job_id):
        return (
            f"job {job_id!r} was submitted but has no events yet; is `headrace train agent` "
            "running?"
        )
    return f"no events for job {job_id!r}: no job of that id was submitted on {JOBS_TOPIC}"
