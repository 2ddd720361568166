"""The user's side of training jobs: submit and cancel commands, read and follow job events."""

from __future__ import annotations

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
    """Events from the beginning (of one job, or all); stops after `idle_s` unless following.

    A record the agent's producer sent again (its acknowledgement lost: the broker frozen past
    the request timeout) follows its first copy, the same bytes (the event's `at` included):
    it is read once. The agent's producer is not idempotent (see `streams.job_agent`)."""
    last: dict[str, bytes | None] = {}  # each job's latest record
    for _, value in consume(bootstrap, [EVENTS_TOPIC], follow=follow, idle_s=idle_s):
        try:
            event = TrainingEvent.model_validate_json(value or b"")
        except ValidationError:
            continue  # not ours; the topic is shared with other producers
        if last.get(event.job_id) == value:
            continue
        last[event.job_id] = value
        if job_id is None or event.job_id == job_id:
            yield event


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
