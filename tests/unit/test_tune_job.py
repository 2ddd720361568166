"""The agent's tuning jobs without NNI: events per outcome, resume and saved-report restarts.

The tuning function is injected (the real one runs in tests/integration/test_tuning_jobs.py);
these tests check which events the job emits for each outcome, and where it resumes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from headrace.errors import JobCancelled, TuningError
from streams.job_messages import ModelUpdate, TrainingEvent
from streams.job_runner import JobRunner, JobRunnerConfig
from streams.tune_job import experiment_id_for
from training.job_spec import parse_job_spec
from training.tuning.config import TUNE_FILE, TuneConfig
from training.tuning.runner import TUNE_REPORT_FILE, TrialRow, TuneReport

SPEC = {"kind": "tune", "model": "lenet5", "epochs": 1, "tune": {"trials": 2, "tuner": "Random"}}


def _report(config: TuneConfig, experiment_id: str) -> TuneReport:
    return TuneReport(
        experiment_id=experiment_id, experiment_folder="x", tuner=config.tuner, assessor=None,
        trials=[TrialRow(trial_id="t1", sequence=0, status="SUCCEEDED", val_loss=0.3)],
        best_trial_id="t1", best_val_loss=0.3, best_params={"learning_rate": 0.01},
        name=config.train.model_name, version=4, repository=str(config.train.repository),
        test_accuracy=0.9,
    )  # fmt: skip


class FakeTune:
    """Stands in for run_tuning: calls back like it, then returns, fails or is cancelled."""

    def __init__(self, outcome: str = "ok") -> None:
        self.outcome = outcome
        self.calls: list[dict[str, Any]] = []

    def __call__(self, config: TuneConfig, **kwargs: Any) -> TuneReport:
        self.calls.append({"config": config, **kwargs})
        experiment_id = kwargs["resume_id"] or kwargs["experiment_id"]
        kwargs["on_started"](experiment_id, "http://127.0.0.1:1/oview")
        kwargs["on_trial"](TrialRow(trial_id="t1", sequence=0, status="SUCCEEDED", val_loss=0.3,
                                    val_accuracy=0.9, params={"learning_rate": 0.01}))  # fmt: skip
        if self.outcome == "cancel":
            raise JobCancelled("cancelled")
        if self.outcome == "fail":
            raise TuningError("no trial finished")
        return _report(config, experiment_id)


def _run(
    tmp_path: Path, tune: FakeTune, job_id: str = "job-1"
) -> tuple[list[TrainingEvent], list[ModelUpdate]]:
    events: list[TrainingEvent] = []
    updates: list[ModelUpdate] = []
    config = JobRunnerConfig(repository=tmp_path / "repo", runs_dir=tmp_path / "runs")
    runner = JobRunner(config, lambda *a: None, events.append, updates.append, tune=tune)  # type: ignore[arg-type]
    spec = parse_job_spec({**SPEC, "job_id": job_id})
    runner.execute(spec, threading.Event())
    return events, updates


def test_a_tuning_job_emits_started_trial_and_succeeded(tmp_path: Path) -> None:
    tune = FakeTune()
    events, updates = _run(tmp_path, tune)
    assert [e.event for e in events] == ["started", "trial", "succeeded"]
    started, trial, done = events
    assert started.web_ui == "http://127.0.0.1:1/oview" and started.experiment_id == "job-1"
    assert (trial.trial_id, trial.trial_number, trial.trials) == ("t1", 1, 2)
    assert trial.hyper_parameters == {"learning_rate": 0.01}
    assert (done.version, done.trial_id, done.model) == (4, "t1", "lenet5-digits")
    assert updates and updates[0].version == 4 and updates[0].job_id == "job-1"
    config = tune.calls[0]["config"]
    assert config.experiment_dir == tmp_path / "runs" / "tune"
    assert config.train.repository == tmp_path / "repo"
    assert config.train.lineage["job_id"] == "job-1"
    assert tune.calls[0]["resume_id"] is None and tune.calls[0]["experiment_id"] == "job-1"


def test_cancel_and_failure_end_in_their_events(tmp_path: Path) -> None:
    events, updates = _run(tmp_path / "a", FakeTune("cancel"))
    assert events[-1].event == "cancelled" and not updates
    events, updates = _run(tmp_path / "b", FakeTune("fail"))
    assert events[-1].event == "failed" and events[-1].reason == "no trial finished"


def test_a_restarted_agent_resumes_or_reports_the_saved_result(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "tune" / "job-1"
    folder.mkdir(parents=True)
    (folder / TUNE_FILE).write_text("{}")
    tune = FakeTune()
    _run(tmp_path, tune)
    assert tune.calls[0]["resume_id"] == "job-1" and tune.calls[0]["experiment_id"] is None

    (folder / TUNE_REPORT_FILE).write_text(_report(TuneConfig(), "job-1").model_dump_json())
    again = FakeTune()
    events, updates = _run(tmp_path, again)
    assert not again.calls and [e.event for e in events] == ["succeeded"]
    assert updates[0].version == 4


def test_job_ids_nni_refuses_get_a_stable_experiment_id() -> None:
    assert experiment_id_for("job-abc_1") == "job-abc_1"
    long = experiment_id_for("team.a/" + "x" * 60)
    assert long == experiment_id_for("team.a/" + "x" * 60) and len(long) <= 32
    assert long.startswith("job") and long.replace("job", "", 1).isalnum()
