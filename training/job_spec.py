"""Training job specs: the versioned YAML/JSON document a user submits to the training-jobs topic.

A spec names the job and its limits and carries the training settings
(`TrainConfig` fields: model, dataset, hyper-parameters, `distributed`,
`privacy`, `watermark`, `data_source` to train on ingested shards up to an
offset per partition). Keys may sit at the top level, as users write them,
or under `train:`. Where models are stored and runs are kept is the agent's
business, so a spec cannot set those; the paths it may name (`SPEC_PATHS`: a
dataset folder, a shards root, a watermark key) must lie inside the agent's data
folders (`paths_outside`, checked by the agent). `parse_job_spec` reports every problem
at once, resource checks included, before anything reaches Ray. A spec with
`kind: tune` and a `tune:` section (tuner, assessor, trials, concurrency,
search_space) is a tuning job: the training settings are every trial's base.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from headrace.errors import ConfigError
from training.config import TrainConfig
from training.datasets import unread_folder
from training.documents import load_document
from training.tuning.config import TuneSettings

SCHEMA_VERSION = 1
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
AGENT_OWNED = frozenset({"repository", "runs_dir", "run_id", "resume", "progress", "lineage"})
"""TrainConfig fields the agent sets; a spec that sets them is refused."""
SPEC_PATHS = ("data_dir", "data_source.root", "watermark.key_file")
"""Every path a job spec can name (the agent sets the others): what the agent would read."""


def new_job_id() -> str:
    """A short unique job id."""
    return f"job-{uuid.uuid4().hex[:12]}"


class TrainingJobSpec(BaseModel):
    """One training job."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: Literal["train", "tune"] = Field(
        default="train",
        description="train: one model; tune: an NNI search (the `tune:` section) whose best "
        "trial is published; `train` then holds every trial's base settings.",
    )
    job_id: str = Field(default_factory=new_job_id, pattern=JOB_ID_PATTERN)
    max_retries: int = Field(
        default=2, ge=0, le=20, description="Restarts from the last checkpoint after a crash."
    )
    train: TrainConfig = Field(description="Model, dataset, hyper-parameters, distribution.")
    tune: TuneSettings | None = Field(
        default=None, description="Tuner, assessor, trials, concurrency, search space (kind tune)."
    )

    @model_validator(mode="after")
    def _kind_sections(self) -> TrainingJobSpec:
        if self.kind == "train" and self.tune is not None:
            raise ValueError("a tune: section needs kind: tune")
        if self.kind == "tune":
            self.tune = self.tune or TuneSettings()
            if self.train.distributed is not None and self.train.distributed.workers > 1:
                raise ValueError("tuning trials run one process each: drop distributed")
        return self

    @model_validator(mode="before")
    @classmethod
    def _gather_train_fields(cls, data: Any) -> Any:
        """Top-level training keys (model, epochs, distributed, ...) move under `train`."""
        if not isinstance(data, dict) or not isinstance(data.get("train") or {}, dict):
            return data  # the schema says what is wrong
        own = set(cls.model_fields)
        train = dict(data.get("train") or {})
        outer = {key: value for key, value in data.items() if key in own}
        for key, value in data.items():
            if key not in own:
                train[key] = value
        train.setdefault("progress", False)
        return {**outer, "train": train}

    @property
    def workers(self) -> int:
        return self.train.distributed.workers if self.train.distributed else 1


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        if location[:1] == ["train"]:
            location = location[1:]
        where = ".".join(location)
        message = str(error["msg"]).removeprefix("Value error, ")
        given = error.get("input")
        if isinstance(given, str | int | float) and not error["type"].startswith("value_error"):
            message += f" (got {given!r})"
        problems.append(f"{where}: {message}" if where else message)
    return problems


def parse_job_spec(
    document: str | dict[str, Any], available_cpus: int | None = None, source: str = "<spec>"
) -> TrainingJobSpec:
    """Validate a spec (YAML/JSON text or a dict), listing every problem in one ConfigError."""
    data = load_document(document, f"job spec {source}") if isinstance(document, str) else document
    if not isinstance(data, dict):
        raise ConfigError(f"job spec {source} must be a mapping of settings, not {data!r:.60}")
    problems: list[str] = []
    section = data.get("train") or {}
    if not isinstance(section, dict):
        raise ConfigError(
            f"job spec {source}: train must be a mapping of settings, not {section!r:.60}"
        )
    train_keys = set(data) | set(section)
    for key in sorted(AGENT_OWNED & train_keys):
        problems.append(f"{key}: set by the training agent, not by a job spec")
    spec: TrainingJobSpec | None = None
    cleaned = {k: v for k, v in data.items() if k not in AGENT_OWNED}
    if isinstance(cleaned.get("train"), dict):
        cleaned["train"] = {k: v for k, v in cleaned["train"].items() if k not in AGENT_OWNED}
    try:
        spec = TrainingJobSpec.model_validate(cleaned)
    except ValidationError as exc:
        problems.extend(_problems(exc))
    if spec is not None and spec.train.data_dir is not None:
        problems.extend(filter(None, [unread_folder(spec.train.dataset, "data_dir")]))
    workers = _requested_workers(data)
    section = data.get("tune")
    concurrency = section.get("concurrency") if isinstance(section, dict) else None
    if isinstance(concurrency, int) and available_cpus is not None and concurrency > available_cpus:
        problems.append(
            f"tune.concurrency: {concurrency} trials at once need {concurrency} CPUs but only "
            f"{available_cpus} are available"
        )
    if available_cpus is not None and workers is not None and workers > available_cpus:
        problems.append(
            f"distributed.workers: {workers} workers need {workers} CPUs but only "
            f"{available_cpus} are available"
        )
    if problems or spec is None:
        raise ConfigError(f"invalid job spec {source}:\n  " + "\n  ".join(problems))
    return spec


def _requested_workers(data: dict[str, Any]) -> int | None:
    train = data.get("train") or {}
    section = data.get("distributed") or (
        train.get("distributed") if isinstance(train, dict) else None
    )
    workers = section.get("workers") if isinstance(section, dict) else None
    return workers if isinstance(workers, int) and not isinstance(workers, bool) else None


def spec_to_json(spec: TrainingJobSpec) -> str:
    """The spec as it travels on the topic (agent-owned fields left out)."""
    payload = spec.model_dump(mode="json")
    payload["train"] = {k: v for k, v in payload["train"].items() if k not in AGENT_OWNED}
    return json.dumps(payload)


def valid_job_id(job_id: str) -> bool:
    return re.match(JOB_ID_PATTERN, job_id) is not None


def spec_paths(train: TrainConfig) -> dict[str, Path]:
    """The paths of `SPEC_PATHS` that `train` names, by field."""
    named = {
        "data_dir": train.data_dir,
        "data_source.root": train.data_source.root if train.data_source else None,
        "watermark.key_file": train.watermark.key_file if train.watermark else None,
    }
    return {field: path for field, path in named.items() if path is not None}


def resolved(path: Path) -> Path:
    """`path` as the agent reads it: user folder expanded, absolute, symlinks followed."""
    return path.expanduser().resolve()


def paths_outside(spec: TrainingJobSpec, folders: Sequence[Path]) -> list[str]:
    """Why `spec` names a path outside `folders` (one problem per field; empty if none).

    The agent runs jobs from anyone who can produce to `training-jobs`: a path outside its
    data folders would make it read (and train on, and publish a model of) any folder or
    file its account can read. The problems name the field and what the spec gave, never
    the agent's own folders.
    """
    roots = [resolved(folder) for folder in folders]
    return [
        f"{field}: {str(path)!r:.200} is outside the training agent's data folders (its data "
        "root and HEADRACE_DATA_DIR); name a path inside them"
        for field, path in spec_paths(spec.train).items()
        if not any(resolved(path).is_relative_to(root) for root in roots)
    ]
