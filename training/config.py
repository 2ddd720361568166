"""The training job's configuration: one pydantic model, validated whole before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.model_config import check_model_name
from training.datasets import DATASETS
from training.models import MODELS
from training.preprocess.config import PreprocessConfig


class TrainConfig(BaseModel):
    """Everything `headrace train` needs; flags and environment settings fill it in."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(default="lenet5", description="Registered architecture name.")
    dataset: str = Field(default="digits", description="Registered dataset name.")
    data_dir: Path | None = Field(default=None, description="Folder of a file-based dataset.")
    epochs: int = Field(default=30, ge=1, le=10_000, description="Most epochs to run.")
    batch_size: int = Field(default=64, ge=1, le=65_536)
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int = Field(default=0, ge=0)
    patience: int = Field(
        default=5, ge=0, description="Stop after this many epochs without a better val loss; 0 = never."
    )
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    test_fraction: float = Field(default=0.1, gt=0, lt=1)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    name: str | None = Field(default=None, description="Repository model name; default MODEL-DATASET.")
    publish: bool = Field(default=True, description="Export to ONNX and publish to the repository.")
    repository: Path = Path("model_repository")
    runs_dir: Path = Path("runs")
    run_id: str | None = Field(default=None, description="Run folder name; default a timestamp.")
    resume: Path | None = Field(default=None, description="Checkpoint file or run folder to resume.")
    max_batch_size: int = Field(default=64, ge=1, description="Serving max batch size in config.json.")
    progress: bool = Field(default=True, description="Show a progress bar on stderr.")

    @model_validator(mode="after")
    def _check_names(self) -> TrainConfig:
        problems: list[str] = []
        if self.model not in MODELS:
            problems.append(f"unknown model {self.model!r} (choose {', '.join(sorted(MODELS))})")
        if self.dataset not in DATASETS:
            problems.append(
                f"unknown dataset {self.dataset!r} (choose {', '.join(sorted(DATASETS))})"
            )
        elif DATASETS[self.dataset][1] and self.data_dir is None:
            problems.append(f"dataset {self.dataset!r} is read from files: pass --data-dir FOLDER")
        if self.val_fraction + self.test_fraction >= 0.9:
            problems.append("val_fraction + test_fraction must leave at least 10% for training")
        if self.name is not None:
            try:
                check_model_name(self.name)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def model_name(self) -> str:
        """The name the model is published under."""
        return self.name or f"{self.model}-{self.dataset}"
