"""The tuning job's configuration: base training settings, tuner, assessor, trial budget.

`TuneConfig.train` is the base `TrainConfig` every trial starts from (model,
dataset, epochs per trial, seed, repository and name of the published best
model); the tuner samples the search space's keys on top of it. The config is
validated whole at the entrypoint and written beside the experiment
(`<experiment_dir>/<experiment_id>/headrace-tune.json`) so trials, `--resume`
and the publish step all read the same settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from headrace.errors import ConfigError
from training.config import TrainConfig
from training.tuning.search_space import DEFAULT_SEARCH_SPACE, check_search_space

TunerName = Literal["TPE", "GP", "Anneal", "Random", "BOHB"]
AssessorName = Literal["Medianstop", "Curvefitting"]
EXPERIMENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
"""NNI's rule for experiment ids."""
TUNE_FILE = "headrace-tune.json"
MAX_DURATION_S = 366 * 24 * 3600
"""Longest experiment budget: a year, more than any search runs. NNI reads the budget as a float
and rounds it up to whole seconds, so 10**309 s ended in OverflowError inside its manager."""


def check_experiment_id(experiment_id: str) -> str:
    """`experiment_id` if NNI accepts it, else a ConfigError. An id is also a folder name in
    the experiment dir: '../x' would read another folder and be written into NNI's list."""
    if not re.fullmatch(EXPERIMENT_ID_PATTERN, experiment_id):
        raise ConfigError(
            f"experiment id {experiment_id!r}: use 1 to 32 letters, digits, '-' or '_' (NNI's rule)"
        )
    return experiment_id


class TuneSettings(BaseModel):
    """The tuning knobs a user chooses (a job spec's `tune:` section; flags of `headrace tune`)."""

    model_config = ConfigDict(extra="forbid")

    tuner: TunerName = Field(default="TPE", description="NNI built-in tuner (BOHB: advisor).")
    assessor: AssessorName | None = Field(
        default=None, description="Early-stops poor trials from their per-epoch curves; None = off."
    )
    trials: int = Field(default=10, ge=1, le=10_000, description="Trials to run in all.")
    concurrency: int = Field(default=1, ge=1, le=64, description="Trials running at once.")
    search_space: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: dict(DEFAULT_SEARCH_SPACE),
        description="NNI-format search space over TrainConfig fields.",
    )
    max_duration_s: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DURATION_S,
        description="Stop sampling new trials after this long; None = no limit.",
    )

    @field_validator("search_space")
    @classmethod
    def _valid_space(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        try:
            return check_search_space(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _budget(self) -> TuneSettings:
        if self.concurrency > self.trials:
            raise ValueError(
                f"concurrency {self.concurrency} exceeds trials {self.trials}: "
                "lower --concurrency or raise --trials"
            )
        if self.tuner == "BOHB":
            problems = []
            if self.assessor is not None:
                problems.append(
                    f"BOHB stops poor trials itself (successive halving), NNI ignores an "
                    f"assessor beside it: drop --assessor {self.assessor}"
                )
            quantised = sorted(
                key
                for key, entry in self.search_space.items()
                if entry["_type"] in {"quniform", "qloguniform"}
            )
            if quantised:
                problems.append(
                    f"BOHB (ConfigSpace 1.x) has no quantised ranges: give {', '.join(quantised)} "
                    "as uniform, loguniform, randint or choice"
                )
            if problems:
                raise ValueError("; ".join(problems))
        return self


class TuneConfig(TuneSettings):
    """Everything `headrace tune` needs: the knobs, the base training settings, the folders."""

    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="Base training settings of every trial; `epochs` is the per-trial budget.",
    )
    experiment_dir: Path = Field(
        default=Path("runs/tune"),
        description="NNI's experiment folder; each experiment (and its trial archive) "
        "lives in <experiment_dir>/<experiment_id>/.",
    )
    port: int | None = Field(
        default=None, ge=1, le=65_535, description="Web UI / REST port; None = a free port."
    )

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        problems = []
        if self.train.privacy is not None or self.train.watermark is not None:
            problems.append("tuning does not combine with privacy or watermark training")
        if self.train.resume is not None:
            problems.append("trials start fresh: resume a tuning run with --resume EXPERIMENT_ID")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def experiment_root(self) -> Path:
        """The folder holding every experiment (absolute: NNI's node manager runs elsewhere)."""
        return self.experiment_dir.expanduser().resolve()

    def experiment_folder(self, experiment_id: str) -> Path:
        """`<experiment_dir>/<experiment_id>`: NNI's files and the trial archive."""
        return self.experiment_root / experiment_id
