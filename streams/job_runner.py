"""Running one submitted training job: validate, train on Ray with retries, publish, announce.

`JobRunner.execute` turns a job command into events (`accepted` or `rejected`,
`started`, one `epoch` per epoch, `retrying` after a worker crash, then
`succeeded`, `failed` or `cancelled`) through an `emit` callable, and announces
a published version through `announce`. It knows nothing about Kafka, so tests
can drive it directly; `streams.job_agent` wires it to the topics. A `kind: tune`
job is handed to `streams.tune_job` (an NNI experiment; `trial` events).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from headrace.errors import ConfigError, HeadraceError, JobCancelled, WorkerCrashed
from streams.job_messages import ModelUpdate, TrainingEvent
from training.checkpoint import checkpoint_path
from training.config import TrainConfig
from training.datasets.shards import DEFAULT_DATA_ROOT, ShardSource
from training.job_spec import (
    TrainingJobSpec,
    parse_job_spec,
    paths_outside,
    resolved,
    spec_to_json,
)
from training.loop import EpochRecord
from training.recipe import REPORT_FILE, TrainReport

log = logging.getLogger(__name__)

Emit = Callable[[TrainingEvent], None]
Announce = Callable[[ModelUpdate], None]
Train = Callable[[TrainConfig, Callable[[EpochRecord], None], Callable[[], bool]], TrainReport]


class JobRunnerConfig(BaseModel):
    """Where the agent keeps models and runs, and how much Ray can give a job."""

    model_config = ConfigDict(extra="forbid")

    repository: Path = Field(description="Model repository new versions are published to.")
    runs_dir: Path = Field(description="Run folders (checkpoints, TensorBoard), one per job.")
    available_cpus: int | None = Field(default=None, ge=1, description="Ray CPUs; None = unknown.")
    data_root: Path = Field(
        default=DEFAULT_DATA_ROOT, description="Data root of jobs that train on ingested shards."
    )
    data_dir: Path | None = Field(
        default=None,
        description="Folder of file-based datasets (HEADRACE_DATA_DIR); with the data root, "
        "the only place a job spec may name a path in.",
    )

    @property
    def data_folders(self) -> list[Path]:
        """The folders a job spec's paths must lie in."""
        return [self.data_root] + ([self.data_dir] if self.data_dir is not None else [])


class JobRunner:
    """Executes jobs one at a time (see the module docstring)."""

    def __init__(
        self,
        config: JobRunnerConfig,
        train: Train,
        emit: Emit,
        announce: Announce,
        tune: Callable[..., Any] | None = None,
    ):
        self.config = config
        self._train = train
        self._emit = emit
        self._announce = announce
        self._tune = tune  # tuning jobs (streams.tune_job); None = training.tuning's run_tuning

    def validate(self, job_id: str, spec: dict[str, Any] | None) -> TrainingJobSpec | None:
        """The parsed spec, or None after emitting `rejected` with every problem listed."""
        try:
            if spec is None:
                raise ConfigError("a submit command needs a spec")
            parsed = parse_job_spec({**spec, "job_id": job_id}, self.config.available_cpus)
            outside = paths_outside(parsed, self.config.data_folders)
            if outside:
                raise ConfigError("invalid job spec:\n  " + "\n  ".join(outside))
        except ConfigError as exc:
            self._emit(TrainingEvent(job_id=job_id, event="rejected", reason=exc.message))
            return None
        except Exception as exc:  # a spec must never take the agent down: it would on restart
            log.exception("validating the spec of job %s failed", job_id)
            reason = f"the spec could not be validated ({type(exc).__name__}: {exc})"
            self._emit(TrainingEvent(job_id=job_id, event="rejected", reason=reason))
            return None
        self._emit(TrainingEvent(job_id=job_id, event="accepted", model=parsed.train.model_name))
        return parsed

    def train_config(self, spec: TrainingJobSpec) -> TrainConfig:
        """The spec's training settings with the agent's folders and the job's lineage; the
        paths the spec names, resolved as `validate` checked them (absolute for Ray)."""
        train = spec.train
        watermark = train.watermark
        return train.model_copy(
            update={
                "repository": self.config.repository,
                "runs_dir": self.config.runs_dir,
                "run_id": spec.job_id,
                "progress": False,
                "lineage": {**train.lineage, "job_id": spec.job_id},
                "data_dir": None if train.data_dir is None else resolved(train.data_dir),
                "data_source": self._shard_source(train.data_source),
                "watermark": None
                if watermark is None
                else watermark.model_copy(update={"key_file": resolved(watermark.key_file)}),
            }
        )

    def _shard_source(self, source: ShardSource | None) -> ShardSource | None:
        """The agent's data root, as an absolute path (Ray workers may run elsewhere)."""
        if source is None:
            return None
        root = resolved(source.root or self.config.data_root)
        return source.model_copy(update={"root": root})

    def execute(
        self,
        spec: TrainingJobSpec,
        cancelled: threading.Event,
        interrupted: threading.Event | None = None,
    ) -> None:
        """Run the job to its end; every outcome is an event, nothing is raised. A job stopped
        with `interrupted` set (the agent is stopping; the job stays unacknowledged and is
        resumed by the next agent) gets no event: `cancelled` is for a user's cancel."""
        job_id = spec.job_id
        config = self.train_config(spec)
        if spec.kind == "tune":  # an NNI experiment on this machine, not a Ray task
            from streams.tune_job import execute_tune

            execute_tune(
                spec,
                config,
                self.config.runs_dir,
                cancelled,
                self._emit,
                self._announce,
                self._tune,
                interrupted,
            )
            return
        run_dir = config.runs_dir / f"{config.model_name}-{job_id}"
        other = _other_spec(run_dir, spec)
        if other:
            self._failed(job_id, 1, other)
            return
        finished = _finished_report(run_dir)
        if finished is not None:  # a restarted agent met a job it had already done
            self._succeeded(job_id, finished, attempt=1)
            return
        for attempt in range(1, spec.max_retries + 2):
            if checkpoint_path(run_dir).is_file() and not _distributed(config):
                config = config.model_copy(update={"resume": run_dir})
            self._emit(TrainingEvent(job_id=job_id, event="started", attempt=attempt))
            try:
                report = self._train(
                    config, self._epoch_emitter(job_id, attempt, config.epochs), cancelled.is_set
                )
            except JobCancelled:
                if interrupted is not None and interrupted.is_set():
                    log.info("job %s interrupted by the agent's stop; it resumes later", job_id)
                    return
                self._emit(TrainingEvent(job_id=job_id, event="cancelled", attempt=attempt))
                return
            except WorkerCrashed as exc:
                if attempt <= spec.max_retries and not cancelled.is_set():
                    self._emit(
                        TrainingEvent(
                            job_id=job_id, event="retrying", attempt=attempt, reason=exc.message
                        )
                    )
                    continue
                self._failed(job_id, attempt, f"{exc.message}; gave up after {attempt} attempts")
                return
            except HeadraceError as exc:
                self._failed(job_id, attempt, exc.message)
                return
            except Exception as exc:  # a job must end in an event, whatever broke
                self._failed(job_id, attempt, f"{type(exc).__name__}: {exc}")
                return
            self._succeeded(job_id, report, attempt)
            return

    def _epoch_emitter(
        self, job_id: str, attempt: int, epochs: int
    ) -> Callable[[EpochRecord], None]:
        def emit(record: EpochRecord) -> None:
            self._emit(
                TrainingEvent(
                    job_id=job_id,
                    event="epoch",
                    attempt=attempt,
                    epoch=record.epoch,
                    epochs=epochs,
                    train_loss=record.train_loss,
                    val_loss=record.val_loss,
                    val_accuracy=record.val_accuracy,
                    samples_per_s=record.samples_per_s,
                    epoch_s=record.seconds,
                    bytes_communicated=record.bytes_communicated,
                )
            )

        return emit

    def _failed(self, job_id: str, attempt: int, reason: str) -> None:
        self._emit(TrainingEvent(job_id=job_id, event="failed", attempt=attempt, reason=reason))

    def _succeeded(self, job_id: str, report: TrainReport, attempt: int) -> None:
        if report.version is not None:
            self._announce(
                ModelUpdate(
                    model=report.name,
                    version=report.version,
                    job_id=job_id,
                    metrics={"test_accuracy": report.test_accuracy},
                )
            )
        self._emit(
            TrainingEvent(
                job_id=job_id,
                event="succeeded",
                attempt=attempt,
                model=report.name,
                version=report.version,
                test_accuracy=report.test_accuracy,
            )
        )


def _distributed(config: TrainConfig) -> bool:
    return config.distributed is not None and config.distributed.workers > 1


SPEC_FILE = "job-spec.json"


def _other_spec(run_dir: Path, spec: TrainingJobSpec) -> str | None:
    """Why the job cannot run in `run_dir`: its id already ran there with another spec (a
    restarted agent meets the same spec and resumes or reports). Records the spec when the
    folder is new."""
    recorded = run_dir / SPEC_FILE
    mine = json.loads(spec_to_json(spec))
    try:
        theirs = json.loads(recorded.read_text())
    except FileNotFoundError:
        run_dir.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps(mine))
        return None
    except (OSError, ValueError):
        return None  # unreadable: as before this record existed
    if theirs == mine:
        return None
    return (
        f"job id {spec.job_id!r} already ran with another spec (see {recorded}); its run "
        "is kept as it is: submit this spec with a new job id"
    )


def _finished_report(run_dir: Path) -> TrainReport | None:
    path = run_dir / REPORT_FILE
    if not path.is_file():
        return None
    try:
        return TrainReport.model_validate(json.loads(path.read_text()))
    except (ValueError, OSError):
        return None
