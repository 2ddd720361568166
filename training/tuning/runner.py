"""A tuning run from start to published model: what `headrace tune` and the job agent call.

`run_tuning` writes the job's settings beside the experiment, starts (or
resumes) the NNI experiment, follows its trials until the budget is spent,
picks the archived trial with the lowest validation loss, publishes it through
the training recipe's publish step (lineage: experiment id, trial id, tuner,
hyper-parameters) and stops the experiment, on success or failure alike. A new
experiment that fails (or is cancelled) before NNI created it leaves no folder.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from headrace.errors import JobCancelled, TuningError
from training.config import TrainConfig
from training.tuning.config import TUNE_FILE, TuneConfig, check_experiment_id
from training.tuning.nni_experiment import (
    ENDED,
    FINISHED,
    NNI_DATABASE,
    NniExperiment,
    TrialInfo,
)
from training.tuning.nni_trial import trial_folder
from training.tuning.objective import TRIAL_FILE, TrialArchive, load_trial_archive, publish_trial
from training.tuning.tuners import check_available

POLL_S = 1.0
TUNER_DID_NOT_CONNECT = "Tuner did not connect"
"""NNI's node manager gives the tuner process a hard-coded 10 s to connect; on a loaded
machine a slow tuner start then ends the experiment in ERROR before any trial ran."""

log = logging.getLogger(__name__)
TUNE_REPORT_FILE = "headrace-report.json"
TRIAL_OUTPUT = Path("environments") / "local-env" / "trials"
"""Where NNI's local training service keeps each trial's stdout and stderr."""


class TrialRow(BaseModel):
    """One trial in progress reports and the summary table."""

    trial_id: str
    sequence: int
    status: str
    params: dict[str, object] = Field(default_factory=dict)
    val_loss: float | None = None
    val_accuracy: float | None = None
    epochs_run: int | None = None
    seconds: float | None = None
    error: str | None = Field(
        default=None, description="A failed trial's last stderr line (its `error: ...` reason)."
    )


class TuneReport(BaseModel):
    """What a finished tuning run reports (`headrace tune --json` prints it)."""

    experiment_id: str
    experiment_folder: str
    tuner: str
    assessor: str | None
    trials: list[TrialRow]
    best_trial_id: str
    best_val_loss: float
    best_params: dict[str, object]
    name: str
    version: int | None
    repository: str
    test_accuracy: float


def new_experiment_id() -> str:
    """A short experiment id NNI accepts (letters and digits, at most 32)."""
    return f"tune{secrets.token_hex(4)}"


def _absolute(config: TuneConfig) -> TuneConfig:
    """Paths made absolute: trials run in another working directory (the project root)."""
    train = config.train.model_copy(
        update={
            "repository": config.train.repository.expanduser().resolve(),
            "data_dir": None
            if config.train.data_dir is None
            else config.train.data_dir.expanduser().resolve(),
        }
    )
    return config.model_copy(update={"train": train, "experiment_dir": config.experiment_root})


def check_dataset(train: TrainConfig) -> None:
    """Load the trials' dataset once, as `headrace train` does before training: a missing,
    empty or malformed folder is a DatasetError now, not a failure of every trial. The
    splits are cached on disk, so the trials do not pay for it again."""
    train.load_splits()


def prepare(config: TuneConfig, experiment_id: str | None = None) -> tuple[TuneConfig, str]:
    """Write the job's settings into a new experiment folder; returns them and the id."""
    config = _absolute(config)
    experiment_id = check_experiment_id(experiment_id or new_experiment_id())
    folder = config.experiment_folder(experiment_id)
    if folder.exists():
        raise TuningError(
            f"experiment {experiment_id!r} already exists in {config.experiment_root}: "
            f"continue it with --resume {experiment_id}"
        )
    folder.mkdir(parents=True)
    (folder / TUNE_FILE).write_text(config.model_dump_json(indent=2), encoding="utf-8")
    return config, experiment_id


def load_tune_config(experiment_dir: Path, experiment_id: str) -> TuneConfig:
    """The settings an experiment was started with (TuningError when it is not there)."""
    folder = Path(experiment_dir).expanduser().resolve() / check_experiment_id(experiment_id)
    path = folder / TUNE_FILE
    if not path.is_file():
        raise TuningError(
            f"no headrace experiment {experiment_id!r} in {path.parent.parent}: pass the "
            "--experiment-dir it was started with"
        )
    return TuneConfig.model_validate_json(path.read_text(encoding="utf-8"))


def trial_error(folder: Path, trial_id: str) -> str | None:
    """The last line a trial wrote to stderr (its `error: ...` line when it failed cleanly)."""
    path = folder / TRIAL_OUTPUT / trial_id / "trial.stderr"
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return None
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else None


INTERRUPTED = "INTERRUPTED"
"""How `tune view` lists a trial that was waiting or running when its experiment stopped."""


def viewed_row(row: TrialRow) -> TrialRow:
    """`row` as the table of a stopped experiment lists it. NNI's database keeps the state each
    trial had when the experiment stopped, so a trial that was waiting or running then still
    says so, though no trial of a viewed experiment runs: it is listed as INTERRUPTED."""
    if row.status in FINISHED:
        return row
    return row.model_copy(update={"status": INTERRUPTED})


def _archive(folder: Path, trial_id: str) -> TrialArchive | None:
    path = trial_folder(folder, trial_id)
    return load_trial_archive(path) if (path / TRIAL_FILE).is_file() else None


def trial_row(folder: Path, trial: TrialInfo) -> TrialRow:
    """A trial as NNI lists it, with its archived outcome when it finished."""
    archive = _archive(folder, trial.trial_id)
    row = TrialRow(
        trial_id=trial.trial_id, sequence=trial.sequence, status=trial.status, params=trial.params
    )
    if archive is not None:
        outcome = archive.outcome
        row.params = dict(archive.params)
        row.val_loss, row.val_accuracy = outcome.best_val_loss, outcome.best_val_accuracy
        row.epochs_run, row.seconds = outcome.epochs_run, outcome.seconds
    if trial.status == "FAILED":
        row.error = trial_error(folder, trial.trial_id)
    return row


def best_trial(folder: Path, trial_ids: list[str]) -> tuple[str, TrialArchive] | None:
    """The archived trial with the lowest best validation loss (ties: the earliest)."""
    best: tuple[str, TrialArchive] | None = None
    for trial_id in trial_ids:
        archive = _archive(folder, trial_id)
        if archive is None:
            continue
        if best is None or archive.outcome.best_val_loss < best[1].outcome.best_val_loss:
            best = (trial_id, archive)
    return best


def follow(
    experiment: NniExperiment,
    on_trial: Callable[[TrialRow], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    poll_s: float = POLL_S,
) -> list[TrialInfo]:
    """Poll until no trial is left to run; report each trial once as it finishes."""
    reported: set[str] = set()
    while True:
        status = experiment.status()
        trials = experiment.trials()
        for trial in trials:
            if trial.status in FINISHED and trial.trial_id not in reported:
                reported.add(trial.trial_id)
                if on_trial is not None:
                    on_trial(trial_row(experiment.folder, trial))
        if status == "ERROR":
            raise TuningError(
                f"NNI stopped experiment {experiment.experiment_id} with an error: "
                f"{experiment.error() or 'no message'}; see {experiment.folder / 'log'}"
            )
        running = [t for t in trials if t.status not in FINISHED]
        if status in ENDED and not running:
            return trials
        if should_stop is not None and should_stop():
            raise JobCancelled(f"tuning experiment {experiment.experiment_id} was cancelled")
        time.sleep(poll_s)


def follow_with_one_restart(
    experiment: NniExperiment,
    on_trial: Callable[[TrialRow], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    poll_s: float = POLL_S,
) -> list[TrialInfo]:
    """`follow`, restarting the experiment once (same port) when its tuner process failed to
    connect in time and no trial has run yet; any other error is raised as it is."""
    try:
        return follow(experiment, on_trial, should_stop, poll_s)
    except TuningError as exc:
        if TUNER_DID_NOT_CONNECT not in str(exc) or experiment.trials():
            raise
        port = experiment.port
        log.warning("the tuner did not start in time (a loaded machine?); restarting once")
        experiment.stop()
        experiment.resume(port)
        return follow(experiment, on_trial, should_stop, poll_s)


def run_tuning(
    config: TuneConfig,
    *,
    resume_id: str | None = None,
    experiment_id: str | None = None,
    on_started: Callable[[str, str], None] | None = None,
    on_trial: Callable[[TrialRow], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    poll_s: float = POLL_S,
) -> TuneReport:
    """Run (or, with `resume_id`, continue) an experiment and publish its best trial.

    `on_started(experiment_id, url)` is called once the web UI answers; `on_trial`
    once per finished trial. The experiment is stopped whatever happens. Resuming an
    experiment that already published its best trial runs nothing and publishes nothing:
    its saved report is returned.
    """
    if resume_id is not None:
        stored = load_tune_config(config.experiment_dir, resume_id)
        done = finished_report(config.experiment_dir, resume_id)
        if done is not None:
            return done
        if stored.experiment_root != config.experiment_root:  # moved: it ran the old copy
            raise TuningError(
                f"experiment {resume_id!r} was started in {stored.experiment_root} and its "
                f"trials read their settings there, so it cannot be resumed from "
                f"{config.experiment_root}: move it back and pass --experiment-dir "
                f"{stored.experiment_root}, or start a new experiment"
            )
        config = stored.model_copy(update={"port": config.port})
        check_available(config.tuner)
        check_dataset(config.train)
        experiment_id = resume_id
    else:
        check_dataset(config.train)
        config, experiment_id = prepare(config, experiment_id)
    experiment = NniExperiment(config.experiment_root, experiment_id)
    try:
        try:
            if should_stop is not None and should_stop():
                raise JobCancelled(
                    f"tuning experiment {experiment_id} was cancelled before it started"
                )
            if resume_id is not None:
                experiment.resume(config.port)
            else:
                experiment.start(config, experiment.folder / TUNE_FILE, config.port)
        except BaseException:
            if resume_id is None:
                discard_unstarted(experiment.folder)
            raise
        if on_started is not None:
            on_started(experiment_id, experiment.url)
        trials = follow_with_one_restart(experiment, on_trial, should_stop, poll_s)
    finally:
        experiment.stop()
    report = publish_best(config, experiment_id, trials)
    path = config.experiment_folder(experiment_id) / TUNE_REPORT_FILE
    path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return report


def discard_unstarted(folder: Path) -> None:
    """Remove a new experiment's folder (`prepare` made it) when NNI never created its
    database there: nothing can resume it, and its id would stay taken ('already exists:
    continue it with --resume', which then finds no experiment)."""
    if folder.is_dir() and not (folder / NNI_DATABASE).exists():
        shutil.rmtree(folder, ignore_errors=True)


def finished_report(experiment_dir: Path, experiment_id: str) -> TuneReport | None:
    """The saved report of an experiment whose best trial was already published, if any."""
    path = Path(experiment_dir).expanduser().resolve() / experiment_id / TUNE_REPORT_FILE
    try:
        return TuneReport.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def publish_best(config: TuneConfig, experiment_id: str, trials: list[TrialInfo]) -> TuneReport:
    """Publish the best archived trial of a finished experiment and build the report."""
    folder = config.experiment_folder(experiment_id)
    rows = [trial_row(folder, trial) for trial in trials]
    chosen = best_trial(folder, [trial.trial_id for trial in trials])
    if chosen is None:
        states = ", ".join(sorted({row.status for row in rows})) or "none started"
        failed = [row.trial_id for row in rows if row.status == "FAILED"]
        cause = trial_error(folder, failed[0]) if failed else None
        raise TuningError(
            f"no trial of experiment {experiment_id} finished ({len(rows)} trials: {states}); "
            "nothing was published."
            + (f" Trial {failed[0]} said: {cause}." if cause else "")
            + f" Trial output: {folder / TRIAL_OUTPUT}/<trial id>/trial.stderr"
        )
    trial_id, archive = chosen
    report = publish_trial(
        trial_folder(folder, trial_id),
        config.train.repository,
        name=config.train.name,
        lineage={
            "tune_experiment_id": experiment_id,
            "tune_trial_id": trial_id,
            "tune_tuner": config.tuner,
            "tune_trials": len(rows),
            "tune_hyper_parameters": json.dumps(archive.params, sort_keys=True),
        },
    )
    return TuneReport(
        experiment_id=experiment_id,
        experiment_folder=str(folder),
        tuner=config.tuner,
        assessor=config.assessor,
        trials=rows,
        best_trial_id=trial_id,
        best_val_loss=archive.outcome.best_val_loss,
        best_params=dict(archive.params),
        name=report.name,
        version=report.version,
        repository=str(config.train.repository),
        test_accuracy=report.test_accuracy,
    )
