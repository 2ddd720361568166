"""`headrace train events`: what it prints, and what it says when there is nothing to print
(stand-ins for the topics: no broker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from headrace.cli import cli
from headrace.errors import HeadraceError
from streams.job_messages import TrainingEvent

HISTORY = [
    TrainingEvent(job_id="a", event="accepted"),
    TrainingEvent(job_id="b", event="accepted"),
    TrainingEvent(job_id="a", event="started"),
]
LATER = [TrainingEvent(job_id="a", event="succeeded"), TrainingEvent(job_id="c", event="accepted")]


@pytest.fixture
def topics(monkeypatch: pytest.MonkeyPatch) -> list[TrainingEvent]:
    """The events on training-events so far (more come when following); job 'c' was
    submitted, 'nosuch' never."""
    on_topic = list(HISTORY)

    def read_events(
        _bootstrap: str, job_id: str | None = None, follow: bool = False, idle_s: float = 2.0
    ) -> Iterator[TrainingEvent]:
        for event in on_topic + (LATER if follow else []):
            if job_id is None or event.job_id == job_id:
                yield event

    monkeypatch.setattr("headrace.commands.jobs._reachable", lambda _flag: "unused:9092")
    monkeypatch.setattr("streams.job_client.read_events", read_events)
    monkeypatch.setattr("streams.job_client.was_submitted", lambda _b, job_id: job_id == "c")
    return on_topic


def _run(*args: str) -> tuple[list[str], BaseException | None, str]:
    result = CliRunner().invoke(cli, ["train", "events", *args])
    error = result.exception if isinstance(result.exception, HeadraceError) else None
    return result.stdout.splitlines(), error, result.stderr


def test_an_unknown_job_is_named_not_met_with_silence(topics: list[TrainingEvent]) -> None:
    """Before: `train events --job nosuch` printed nothing and exited 0."""
    lines, error, _ = _run("--job", "nosuch")
    assert lines == [] and isinstance(error, HeadraceError)  # main() prints it, exit 2
    assert error.message == (
        "no events for job 'nosuch': no job of that id was submitted on training-jobs"
    )
    lines, error, _ = _run("--job", "c")  # submitted, no agent yet
    assert isinstance(error, HeadraceError) and "is `headrace train agent` running?" in str(error)
    topics.clear()
    _, error, _ = _run()
    assert isinstance(error, HeadraceError) and str(error).startswith("no training events yet")


def test_following_says_it_waits_and_shows_each_event_once(topics: list[TrainingEvent]) -> None:
    lines, error, err = _run("--job", "c", "--follow")
    assert error is None
    assert err.strip() == (
        "job 'c' was submitted but has no events yet; is `headrace train agent` running? "
        "(waiting for them; Ctrl-C to stop)"
    )
    assert lines == ["c accepted"]
    lines, error, err = _run("--follow")
    assert error is None and err == ""
    assert lines == ["a accepted", "b accepted", "a started", "a succeeded", "c accepted"]
    lines, _, _ = _run("--job", "a")
    assert lines == ["a accepted", "a started"]


def test_a_record_the_agent_sent_again_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's producer is not idempotent (a broker restart left an idempotent one
    failing every event): a record whose acknowledgement was lost (the broker frozen past the
    request timeout) is on the topic twice, one copy after the other. Before the reader
    dropped the second, `train events` printed that epoch twice (seen in
    tests/integration/test_broker_outage.py). Events of the same kind but another time, or
    another job's between the copies, are kept apart."""
    from streams import job_client

    epoch = TrainingEvent(job_id="a", event="epoch", epoch=2, at=1.0).model_dump_json().encode()
    records = [
        TrainingEvent(job_id="a", event="epoch", epoch=1, at=0.5).model_dump_json().encode(),
        epoch,
        TrainingEvent(job_id="b", event="accepted", at=1.5).model_dump_json().encode(),
        epoch,  # sent again: on its job's partition right after the first copy
        TrainingEvent(job_id="a", event="epoch", epoch=2, at=2.0).model_dump_json().encode(),
    ]
    monkeypatch.setattr(job_client, "_events_so_far", lambda *_a, **_k: iter(records))
    read = [(e.job_id, e.epoch, e.at) for e in job_client.read_events("unused:9092")]
    assert read == [("a", 1, 0.5), ("a", 2, 1.0), ("b", None, 1.5), ("a", 2, 2.0)]
    assert [e.at for e in job_client.read_events("unused:9092", "a")] == [0.5, 1.0, 2.0]
