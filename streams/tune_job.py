"""Running one tuning job (`kind: tune`) for the training agent: NNI experiment -> best model.

`execute_tune` turns a parsed spec into events on the job's stream: `started`
(with the experiment id and its web UI address), one `trial` per finished trial
(status, validation loss and accuracy, hyper-parameters), then `succeeded`
(published model and version, best trial id), `failed` or `cancelled`. The
experiment lives in `<runs_dir>/tune/<experiment id>` where the experiment id is
derived from the job id, so an agent restarted mid-job resumes the experiment,
and a job whose best trial was already published is reported from its saved
report instead of being tuned twice. Like `job_runner`, it knows no Kafka.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from pathlib import Path

from headrace.errors import HeadraceError, JobCancelled
from streams.job_messages import ModelUpdate, TrainingEvent
from training.config import TrainConfig
from training.job_spec import TrainingJobSpec
from training.tuning.config import TUNE_FILE, TuneConfig
from training.tuning.runner import TrialRow, TuneReport, finished_report

Emit = Callable[[TrainingEvent], None]
Announce = Callable[[ModelUpdate], None]
Tune = Callable[..., TuneReport]  # training.tuning.runner.run_tuning
_NNI_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def experiment_id_for(job_id: str) -> str:
    """The job's NNI experiment id: the job id when NNI accepts it, else a digest of it."""
    if _NNI_ID.match(job_id):
        return job_id
    return "job" + hashlib.sha256(job_id.encode()).hexdigest()[:20]


def tune_config(spec: TrainingJobSpec, train: TrainConfig, runs_dir: Path) -> TuneConfig:
    """The job's tuning settings with the agent's folders (`train` already has them)."""
    if spec.tune is None:
        raise ValueError("not a tuning job")
    return TuneConfig(**spec.tune.model_dump(), train=train, experiment_dir=runs_dir / "tune")


def _scalars(params: dict[str, object]) -> dict[str, str | int | float | bool]:
    return {k: v for k, v in params.items() if isinstance(v, str | int | float | bool)}


def execute_tune(
    spec: TrainingJobSpec,
    train: TrainConfig,
    runs_dir: Path,
    cancelled: threading.Event,
    emit: Emit,
    announce: Announce,
    tune: Tune | None = None,
    interrupted: threading.Event | None = None,
) -> None:
    """Run the tuning job to its end; every outcome is an event, nothing is raised (none
    when `interrupted`: the agent stops, and the next one resumes the experiment)."""
    job_id = spec.job_id
    try:
        config = tune_config(spec, train, runs_dir)
    except (ValueError, HeadraceError) as exc:
        emit(TrainingEvent(job_id=job_id, event="failed", reason=str(exc)))
        return
    experiment_id = experiment_id_for(job_id)
    done = finished_report(config.experiment_dir, experiment_id)
    if done is not None:  # a restarted agent met a job it had already finished
        _succeeded(job_id, done, emit, announce)
        return
    resume = (
        experiment_id if (config.experiment_folder(experiment_id) / TUNE_FILE).is_file() else None
    )
    finished: list[TrialRow] = []

    def on_started(started_id: str, url: str) -> None:
        emit(
            TrainingEvent(
                job_id=job_id,
                event="started",
                experiment_id=started_id,
                web_ui=url,
                trials=config.trials,
                model=config.train.model_name,
            )
        )

    def on_trial(row: TrialRow) -> None:
        finished.append(row)
        emit(
            TrainingEvent(
                job_id=job_id,
                event="trial",
                experiment_id=experiment_id,
                trial_id=row.trial_id,
                trial_status=row.status,
                trial_number=len(finished),
                trials=config.trials,
                val_loss=row.val_loss,
                val_accuracy=row.val_accuracy,
                epochs=row.epochs_run,
                hyper_parameters=_scalars(row.params),
                reason=row.error,
            )
        )

    run = tune if tune is not None else _default_tune()
    try:
        report = run(
            config,
            resume_id=resume,
            experiment_id=None if resume else experiment_id,
            on_started=on_started,
            on_trial=on_trial,
            should_stop=cancelled.is_set,
        )
    except JobCancelled:
        if interrupted is None or not interrupted.is_set():
            emit(TrainingEvent(job_id=job_id, event="cancelled", experiment_id=experiment_id))
        return
    except HeadraceError as exc:
        emit(TrainingEvent(job_id=job_id, event="failed", reason=exc.message))
        return
    except Exception as exc:  # a job must end in an event, whatever broke
        emit(TrainingEvent(job_id=job_id, event="failed", reason=f"{type(exc).__name__}: {exc}"))
        return
    _succeeded(job_id, report, emit, announce)


def _default_tune() -> Tune:
    from training.tuning.runner import run_tuning

    return run_tuning


def _succeeded(job_id: str, report: TuneReport, emit: Emit, announce: Announce) -> None:
    if report.version is not None:
        announce(
            ModelUpdate(
                model=report.name,
                version=report.version,
                job_id=job_id,
                metrics={"test_accuracy": report.test_accuracy, "val_loss": report.best_val_loss},
            )
        )
    emit(
        TrainingEvent(
            job_id=job_id,
            event="succeeded",
            model=report.name,
            version=report.version,
            test_accuracy=report.test_accuracy,
            val_loss=report.best_val_loss,
            experiment_id=report.experiment_id,
            trial_id=report.best_trial_id,
            trials=len(report.trials),
            hyper_parameters=_scalars(report.best_params),
        )
    )
