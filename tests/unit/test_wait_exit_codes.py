"""`train status --wait S` and `results --expect N`: a wait that ends without what it waited
for exits 2 with one error line, after printing what it saw (stand-ins for the topics)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from headrace.cli import main
from streams.job_messages import TrainingEvent
from streams.messages import DLQRecord


def _main(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr("sys.argv", ["headrace", *argv])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[TrainingEvent]]:
    """Each job's events on training-events, by job id."""
    on_topic: dict[str, list[TrainingEvent]] = {}

    def read_events(
        _bootstrap: str, job_id: str | None = None, follow: bool = False, idle_s: float = 2.0
    ) -> Iterator[TrainingEvent]:
        yield from on_topic.get(job_id or "", [])

    monkeypatch.setattr("headrace.commands.jobs._reachable", lambda _flag: "unused:9092")
    monkeypatch.setattr("streams.job_client.read_events", read_events)
    return on_topic


def test_a_job_still_running_when_the_wait_ends_exits_2(
    jobs: dict[str, list[TrainingEvent]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `train status J --wait S` printed the latest event and exited 0 when J still
    ran after S seconds, as when it had succeeded."""
    jobs["run"] = [TrainingEvent(job_id="run", event="accepted")]
    jobs["run"].append(TrainingEvent(job_id="run", event="started"))
    assert _main(["train", "status", "run", "--wait", "0.05"], monkeypatch) == 2
    out, err = capsys.readouterr()
    assert out == "run started\n"
    assert err == (
        "error: job 'run' had not ended after --wait 0.05 s (latest: started); wait longer, or "
        "follow it with `headrace train events --job run --follow`\n"
    )
    assert _main(["train", "status", "run"], monkeypatch) == 0  # no wait asked: its state
    for event, code in (("succeeded", 0), ("failed", 1), ("cancelled", 1), ("rejected", 1)):
        jobs[event] = [TrainingEvent(job_id=event, event=event)]  # type: ignore[arg-type]
        assert _main(["train", "status", event, "--wait", "60"], monkeypatch) == code, event
    assert _main(["train", "status", "nosuch", "--wait", "0.05"], monkeypatch) == 2


@pytest.fixture
def outcomes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes | None]]:
    """The records on inference-results and inference-dlq, read until the topics are quiet."""
    on_topics: list[tuple[str, bytes | None]] = []

    def consume(
        _bootstrap: str, _topics: list[str], _follow: bool, _idle_s: float = 5.0
    ) -> Iterator[tuple[str, bytes | None]]:
        yield from on_topics

    monkeypatch.setattr("headrace.commands.produce.answering_bootstrap", lambda _flag: "x:9092")
    monkeypatch.setattr("streams.results.consume", consume)
    return on_topics


@pytest.mark.parametrize("as_json", [False, True])
def test_fewer_outcomes_than_expected_exit_2_after_the_summary(
    as_json: bool,
    outcomes: list[tuple[str, bytes | None]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `results --expect 3` exited 0 when the topics went quiet after 2 outcomes."""
    for request_id in ("a", "b"):
        dlq = DLQRecord(
            request_id=request_id, error_code="invalid_input", message="bad", stage="validate"
        )
        outcomes.append(("inference-dlq", dlq.model_dump_json().encode()))
    argv = ["results", "--idle-s", "0.5", "--quiet"] + (["--json"] if as_json else [])
    assert _main([*argv, "--expect", "3"], monkeypatch) == 2
    out, err = capsys.readouterr()
    if as_json:
        assert json.loads(out)["distinct_request_ids"] == 2
    else:
        assert out.startswith("0 results, 2 DLQ records {'invalid_input': 2}")
    assert err == (
        "error: 2 of the 3 expected requests have an outcome; the reading ended (topics quiet "
        "for --idle-s 0.5 s, or Ctrl-C) without the others: are `headrace stream worker` and "
        "the producer running? Read again with a longer --idle-s\n"
    )
    assert _main([*argv, "--expect", "2"], monkeypatch) == 0
    assert _main(argv, monkeypatch) == 0  # nothing expected: a summary of what there is


def test_a_follow_reading_stopped_short_says_it_was_stopped(
    outcomes: list[tuple[str, bytes | None]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `results --follow --expect 3` ended by Ctrl-C blamed 'topics quiet for
    --idle-s 5 s', a timeout --follow does not have."""

    def consume_until_ctrl_c(*_: object) -> Iterator[tuple[str, bytes | None]]:
        yield from outcomes
        raise KeyboardInterrupt

    monkeypatch.setattr("streams.results.consume", consume_until_ctrl_c)
    dlq = DLQRecord(request_id="a", error_code="invalid_input", message="bad", stage="validate")
    outcomes.append(("inference-dlq", dlq.model_dump_json().encode()))
    assert _main(["results", "--follow", "--quiet", "--expect", "3"], monkeypatch) == 2
    assert capsys.readouterr().err == (
        "error: 1 of the 3 expected requests have an outcome; the reading was stopped (Ctrl-C) "
        "without the others: are `headrace stream worker` and the producer running? Read "
        "again, and wait longer before Ctrl-C\n"
    )
