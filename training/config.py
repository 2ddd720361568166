"""The training job's configuration: one pydantic model, validated whole before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from security.adversarial.config import AdversarialConfig
from security.privacy.config import PrivacyConfig
from security.watermark.config import WatermarkConfig
from serving.model_config import MAX_BATCH_SIZE, check_model_name
from training.datasets import DATASETS, DatasetSplits, ShardSource, load_splits
from training.distributed.config import DistributedConfig
from training.models import MODELS, build_model
from training.preprocess.config import PreprocessConfig
from training.privacy import privacy_problems, with_dp_defaults

MAX_SERVING_BATCH = MAX_BATCH_SIZE
"""Largest max_batch_size a trained model is published with: what a config.json may hold."""


class TrainConfig(BaseModel):
    """Everything `headrace train` needs; flags and environment settings fill it in."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(default="lenet5", description="Registered architecture name.")
    width: float = Field(
        default=1.0, gt=0, le=16, description="Channel multiplier of the model; 1.0 = classic."
    )
    dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Dropout after the model's hidden layers; 0 = none."
    )
    dataset: str = Field(default="digits", description="Registered dataset name.")
    data_dir: Path | None = Field(default=None, description="Folder of a file-based dataset.")
    data_source: ShardSource | None = Field(
        default=None,
        description="Train on the dataset's ingested shards (up to an offset per partition) "
        "instead of its files; the selection is recorded in the lineage.",
    )
    epochs: int = Field(default=50, ge=1, le=10_000, description="Most epochs to run.")
    batch_size: int = Field(default=64, ge=1, le=65_536)
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(
        default=0.0,
        ge=0,
        le=1,  # torch overflows float32 on 1e308 ('value cannot be converted ...'), NaN on inf
        description="L2 penalty on the weights (typically 1e-6 to 1e-1); 0 = none.",
    )
    lr_schedule: Literal["plateau", "cosine", "none"] = Field(
        default="plateau",
        description="plateau: halve the learning rate after 2 epochs without a better val loss; "
        "cosine: anneal to zero over `epochs`.",
    )
    threads: int = Field(default=1, ge=1, le=256, description="CPU threads for torch.")
    seed: int = Field(
        default=0,
        ge=0,
        le=2**32 - 1,  # the splits' random_state (scikit-learn) takes no more
        description="Seeds the splits, the weights and the training order.",
    )
    patience: int = Field(
        default=5,
        ge=0,
        le=10_000,  # the most epochs a run has (`epochs`): a longer patience never stops one
        description="Stop after this many epochs without a better val loss; 0 = never.",
    )
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    test_fraction: float = Field(default=0.1, gt=0, lt=1)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    name: str | None = Field(
        default=None, description="Repository model name; default MODEL-DATASET."
    )
    publish: bool = Field(default=True, description="Export to ONNX and publish to the repository.")
    repository: Path = Path("model_repository")
    runs_dir: Path = Path("runs")
    run_id: str | None = Field(default=None, description="Run folder name; default a timestamp.")
    resume: Path | None = Field(
        default=None, description="Checkpoint file or run folder to resume."
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        le=MAX_SERVING_BATCH,
        description="Serving max batch size in config.json.",
    )
    progress: bool = Field(default=True, description="Show a progress bar on stderr.")
    adversarial: AdversarialConfig | None = Field(
        default=None,
        description="Adversarial training (PGD or FGSM, security/adversarial); None = off.",
    )
    watermark: WatermarkConfig | None = Field(
        default=None, description="Embed the watermark of a secret key (security/watermark)."
    )
    lineage: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="Extra lineage recorded at publish (job id, offsets)."
    )
    distributed: DistributedConfig | None = Field(
        default=None, description="Train on Ray workers (see training/distributed); None = local."
    )
    privacy: PrivacyConfig | None = Field(
        default=None,
        description="Differentially private training (DP-SGD with Opacus, security/privacy); "
        "fields left unset then take the DP defaults of training/privacy.py. None = off.",
    )

    @model_validator(mode="before")
    @classmethod
    def _dp_defaults(cls, data: Any) -> Any:
        """With a privacy section, hyper-parameters left unset take the DP-SGD defaults."""
        return with_dp_defaults(data) if isinstance(data, dict) else data

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r} (choose {', '.join(sorted(MODELS))})")
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r} (choose {', '.join(sorted(DATASETS))})")
        return value

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        return None if value is None else check_model_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        problems: list[str] = []
        if DATASETS[self.dataset][1] and self.data_dir is None and self.data_source is None:
            problems.append(f"dataset {self.dataset!r} is read from files: pass --data-dir FOLDER")
        if self.val_fraction + self.test_fraction >= 0.9:
            problems.append("val_fraction + test_fraction must leave at least 10% for training")
        adversarial = self.adversarial
        if adversarial is not None and adversarial.warmup_epochs > self.epochs:
            problems.append(
                f"adversarial warm-up of {adversarial.warmup_epochs} epochs is longer than the "
                f"{self.epochs} epochs of training, so epsilon would never reach "
                f"{adversarial.epsilon:g}: lower --adv-warmup-epochs or raise --epochs"
            )
        problems.extend(privacy_problems(self))
        problems.extend(self._distributed_problems())
        folders = [("runs_dir", "--runs-dir", self.runs_dir)]
        if self.publish:
            folders.append(("repository", "--repository", self.repository))
        for field, flag, folder in folders:  # else NotADirectoryError, after training for a repo
            if (problem := folder_problem(folder, field, flag)) is not None:
                problems.append(problem)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _distributed_problems(self) -> list[str]:
        """What the distributed engine would refuse once started (training/distributed/fit.py)."""
        dcfg = self.distributed
        if dcfg is None or dcfg.workers < 2:
            return []
        problems = []
        if self.batch_size < dcfg.workers:  # each worker steps on batch_size // workers images
            problems.append(
                f"batch_size {self.batch_size} is the global batch, split over "
                f"{dcfg.workers} workers: give each worker at least one image "
                f"(batch_size >= {dcfg.workers}) or use fewer workers"
            )
        hooks = [name for name in ("adversarial", "watermark") if getattr(self, name) is not None]
        if hooks:
            problems.append(
                f"distributed runs do not support {' or '.join(hooks)} training yet: set "
                "distributed.workers to 1 or drop the " + " and ".join(hooks) + " section"
            )
        if dcfg.strategy != "allreduce" and self.model in MODELS:
            # torch.distributed and the loop: load them only for a parameter-server config
            from training.distributed.strategies import server_param_names

            served = len(server_param_names(build_model(self.model), dcfg.strategy))
            if dcfg.server_shards > served:
                problems.append(
                    f"distributed.server_shards: {dcfg.strategy} with {dcfg.server_shards} "
                    f"server shards leaves a shard without parameters ({self.model} has "
                    f"{served} to serve); use at most {served}"
                )
        return problems

    @property
    def model_name(self) -> str:
        """The name the model is published under."""
        return self.name or f"{self.model}-{self.dataset}"

    def load_splits(self) -> DatasetSplits:
        """The run's train/val/test splits: its dataset (or shards), seed and fractions."""
        return load_splits(
            self.dataset,
            self.data_dir,
            self.seed,
            self.val_fraction,
            self.test_fraction,
            source=self.data_source,
        )


def folder_problem(folder: Path, name: str, flag: str) -> str | None:
    """What stops `folder` from being created or used as a folder: a file at its place or at
    one of its parents' (the first of them that exists); None if nothing does."""
    for path in (folder, *folder.parents):
        if path.exists():
            if path.is_dir():
                return None
            where = f"{name} {folder}" + ("" if path == folder else f": {path}")
            return (
                f"{where} is a file, not a folder; pass a folder as {flag} "
                "(it is created if missing)"
            )
    return None
