"""Schemas of the training-job topics: commands in, progress events out, model updates announced.

- `training-jobs`: `JobCommand` records keyed by job id: submit a spec or cancel a job.
- `training-events`: `TrainingEvent` records keyed by job id, in the order they happened.
- `model-updates`: `ModelUpdate` records keyed by model name (a compacted topic: the
  latest version of every model).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

JOBS_TOPIC = "training-jobs"
EVENTS_TOPIC = "training-events"
UPDATES_TOPIC = "model-updates"

EventKind = Literal[
    "accepted",
    "rejected",
    "started",
    "epoch",
    "trial",
    "retrying",
    "succeeded",
    "failed",
    "cancelled",
]
TERMINAL_EVENTS: frozenset[str] = frozenset({"rejected", "succeeded", "failed", "cancelled"})
# Longest `reason` an event carries: a reason quotes what the command or spec said (a key, a
# model name, every unknown field), and a record may be megabytes long; cut, the event stays
# far below what a producer sends (1,000,000 bytes), so the agent can report it.
MAX_REASON_CHARS = 4096


class JobCommand(BaseModel):
    """A record on `training-jobs`."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    command: Literal["submit", "cancel"]
    job_id: str = Field(min_length=1, max_length=128)
    spec: dict[str, Any] | None = Field(default=None, description="The job spec, for submit.")
    submitted_at: float = Field(default_factory=time.time)


class TrainingEvent(BaseModel):
    """A record on `training-events`: one step of a job's life."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = 1
    job_id: str
    event: EventKind
    at: float = Field(default_factory=time.time, description="Unix time of the event.")
    attempt: int = Field(default=1, ge=1)
    epoch: int | None = None
    epochs: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    samples_per_s: float | None = None
    epoch_s: float | None = Field(default=None, description="Wall time of the epoch.")
    bytes_communicated: int | None = None
    model: str | None = None
    version: int | None = None
    test_accuracy: float | None = None
    reason: str | None = Field(default=None, description="Why a job failed or was refused.")
    experiment_id: str | None = Field(default=None, description="NNI experiment (tuning jobs).")
    web_ui: str | None = Field(default=None, description="NNI web UI address (tuning, started).")
    trial_id: str | None = Field(default=None, description="A finished trial, or the best one.")
    trial_status: str | None = Field(default=None, description="SUCCEEDED, FAILED, ...")
    trial_number: int | None = Field(default=None, description="Finished trials so far.")
    trials: int | None = Field(default=None, description="Trial budget of a tuning job.")
    hyper_parameters: dict[str, str | int | float | bool] | None = None

    @field_validator("reason")
    @classmethod
    def _cut_reason(cls, reason: str | None) -> str | None:
        if reason is None or len(reason) <= MAX_REASON_CHARS:
            return reason
        cut = len(reason) - MAX_REASON_CHARS
        return f"{reason[:MAX_REASON_CHARS]}... ({cut} more characters cut)"

    def describe(self) -> str:
        """One human-readable line."""
        parts = [self.job_id] if self.event == "epoch" else [f"{self.job_id} {self.event}"]
        if self.attempt > 1:
            parts.append(f"attempt {self.attempt}")
        if self.web_ui is not None:
            parts.append(f"experiment {self.experiment_id} web UI {self.web_ui}")
        if self.event == "trial":
            parts.append(f"{self.trial_number}/{self.trials} {self.trial_id} {self.trial_status}")
            if self.val_loss is not None:
                parts.append(f"val_loss {self.val_loss:.4f} val_acc {self.val_accuracy:.4f}")
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}/{self.epochs}")
            parts.append(f"loss {self.train_loss:.4f} val_acc {self.val_accuracy:.4f}")
            parts.append(f"{self.samples_per_s:.0f} samples/s")
            if self.bytes_communicated is not None:
                parts.append(f"{self.bytes_communicated} bytes sent")
        if self.version is not None:
            parts.append(f"-> {self.model} version {self.version}")
            if self.trial_id is not None:
                parts.append(f"(best trial {self.trial_id})")
        if self.test_accuracy is not None:
            parts.append(f"test_acc {self.test_accuracy:.4f}")
        if self.reason:
            parts.append(f": {self.reason}")
        return " ".join(parts)


class ModelUpdate(BaseModel):
    """A record on `model-updates`: a new version is in the repository."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = 1
    model: str
    version: int = Field(ge=1)
    job_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    published_at: float = Field(default_factory=time.time)
