"""`follow_with_one_restart`: an experiment whose tuner failed to connect in time is restarted
once, on the same port; other errors, or one after trials ran, are raised unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from headrace.errors import TuningError
from training.tuning.nni_experiment import NniExperiment, TrialInfo
from training.tuning.runner import follow_with_one_restart

CONNECT_ERROR = "Tuner did not connect in 10 seconds. Please check tuner (dispatcher) log."


class FakeExperiment:
    """Answers like NNI's REST API: first run ends in ERROR, the resumed one in DONE."""

    def __init__(self, error: str, trials_before_error: list[TrialInfo]) -> None:
        self.experiment_id = "fake"
        self.folder = Path("/nonexistent")
        self.port: int | None = 4321
        self.runs: list[str] = ["first"]
        self._error = error
        self._trials_before_error = trials_before_error
        self.resumed_on: list[int | None] = []
        self.stops = 0

    def status(self) -> str:
        return "ERROR" if self.runs[-1] == "first" else "DONE"

    def error(self) -> str:
        return self._error

    def trials(self) -> list[TrialInfo]:
        return self._trials_before_error if self.runs[-1] == "first" else []

    def stop(self) -> None:
        self.stops += 1
        self.port = None

    def resume(self, port: int | None = None) -> None:
        self.resumed_on.append(port)
        self.port = port
        self.runs.append("resumed")


def _follow(fake: FakeExperiment) -> list[TrialInfo]:
    return follow_with_one_restart(cast(NniExperiment, fake), poll_s=0.0)


def test_a_tuner_that_did_not_connect_is_restarted_once_on_the_same_port() -> None:
    fake = FakeExperiment(CONNECT_ERROR, [])
    assert _follow(fake) == []
    assert fake.resumed_on == [4321]
    assert fake.stops == 1


def test_other_errors_are_not_retried() -> None:
    fake = FakeExperiment("Traceback: ValueError in the tuner", [])
    with pytest.raises(TuningError, match="ValueError in the tuner"):
        _follow(fake)
    assert fake.resumed_on == []


def test_no_restart_once_trials_have_run() -> None:
    ran = TrialInfo(trial_id="t1", sequence=0, status="RUNNING")
    fake = FakeExperiment(CONNECT_ERROR, [ran])
    with pytest.raises(TuningError, match="did not connect"):
        _follow(fake)
    assert fake.resumed_on == []
