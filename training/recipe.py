"""The training recipe: load data, fit, evaluate on the test split, export to ONNX, verify, publish.

`run_training(config)` is what `headrace train` and later the Kafka job agent call.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from pydantic import BaseModel

from serving.model_config import ModelConfig, TensorSpec
from serving.repository import ModelRepository
from training.config import TrainConfig
from training.datasets import DatasetSplits
from training.evaluate import EvalMetrics, evaluate
from training.export import INPUT_NAME, OUTPUT_NAME, export_onnx, verify_onnx
from training.hooks import PublishInfo, TrainingHook, build_hooks
from training.loop import EpochCallback, FitResult, Trainer
from training.models import build_model
from training.preprocess import BatchPipeline
from training.published import WEIGHTS_FILE, save_weights

REPORT_FILE = "report.json"


class TrainReport(BaseModel):
    """What a finished training run reports (`headrace train --json` prints it)."""

    model: str
    name: str
    dataset: str
    version: int | None
    test_accuracy: float
    test_balanced_accuracy: float
    test_loss: float
    val_loss: float
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    train_seconds: float
    onnx_max_abs_diff: float | None
    run_dir: str
    repository: str | None
    dp_epsilon: float | None = None
    dp_delta: float | None = None


class TrainRecipe:
    """Training as a recipe: `setup`, `run`, `save`, `cleanup`."""

    def __init__(
        self,
        config: TrainConfig,
        on_epoch: EpochCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.on_epoch = on_epoch
        self.should_stop = should_stop
        self.run_dir = run_folder(config)
        self._splits: DatasetSplits | None = None
        self._trainer: Trainer | None = None
        self._fit: FitResult | None = None
        self._test: EvalMetrics | None = None

    def setup(self) -> None:
        cfg = self.config
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        splits = cfg.load_splits()
        model = self.initial_model(splits)
        pipeline = BatchPipeline(
            cfg.preprocess,
            cfg.dataset,
            splits.train.images,
            splits.train.labels,
            splits.num_classes,
            cfg.seed,
        )
        self.adapt_pipeline(pipeline)
        if cfg.publish:  # fail now, not after training, if the name serves another interface
            ModelRepository(cfg.repository).check_interface(self._served_config(splits, pipeline))
        self._splits = splits
        self._trainer = Trainer(model, splits, pipeline, cfg, self.run_dir, self.hooks())

    # -- steps a derived recipe may change (fine-tuning starts from a published model) ------

    def initial_model(self, splits: DatasetSplits) -> torch.nn.Module:
        """The model training starts from: fresh weights of the configured architecture."""
        channels, size, _ = splits.input_shape
        return build_model(
            self.config.model,
            splits.num_classes,
            in_channels=channels,
            image_size=size,
            width=self.config.width,
            dropout=self.config.dropout,
        )

    def adapt_pipeline(self, pipeline: BatchPipeline) -> None:
        """Adjust the fitted preprocessing before training (nothing by default)."""

    def hooks(self) -> list[TrainingHook]:
        """The training hooks of this run."""
        return build_hooks(self.config)

    def run(self) -> None:
        trainer, splits = self._require()
        distributed = self.config.distributed
        if distributed is not None and distributed.workers > 1:
            from training.distributed import fit_distributed

            result = fit_distributed(self.config, self.run_dir, self.on_epoch, self.should_stop)
            trainer.model.load_state_dict(result.best_state)
            self._fit = result.fit
        else:
            self._fit = trainer.fit(self.on_epoch, self.should_stop)
        self._test = evaluate(
            trainer.model, splits.test, trainer.pipeline.eval_batch, splits.num_classes
        )

    def save(self) -> TrainReport:
        trainer, splits = self._require()
        if self._fit is None or self._test is None:
            raise RuntimeError("run() must finish before save()")
        version: int | None = None
        diff: float | None = None
        info = PublishInfo()
        for hook in trainer.hooks:
            info = info.merged(hook.publish_info(trainer.model))
        if self.config.publish:
            version, diff = self._publish(trainer, splits, self._fit, self._test, info)
        report = TrainReport(
            model=self.config.model,
            name=self.config.model_name,
            dataset=self.config.dataset,
            version=version,
            test_accuracy=self._test.accuracy,
            test_balanced_accuracy=self._test.balanced_accuracy,
            test_loss=self._test.loss,
            val_loss=self._fit.best_val_loss,
            epochs_run=self._fit.epochs_run,
            best_epoch=self._fit.best_epoch,
            stopped_early=self._fit.stopped_early,
            train_seconds=self._fit.train_seconds,
            onnx_max_abs_diff=diff,
            run_dir=str(self.run_dir),
            repository=str(self.config.repository) if self.config.publish else None,
            dp_epsilon=info.dp_epsilon,
            dp_delta=info.dp_delta,
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / REPORT_FILE).write_text(report.model_dump_json(indent=2))
        return report

    def cleanup(self) -> None:
        self._trainer = None

    def _require(self) -> tuple[Trainer, DatasetSplits]:
        if self._trainer is None or self._splits is None:
            raise RuntimeError("setup() must run first")
        return self._trainer, self._splits

    def _served_config(self, splits: DatasetSplits, pipeline: BatchPipeline) -> ModelConfig:
        """The config.json the trained model is published with."""
        return ModelConfig(
            name=self.config.model_name,
            max_batch_size=self.config.max_batch_size,
            inputs=[TensorSpec(name=INPUT_NAME, datatype="FP32", dims=list(splits.input_shape))],
            outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", dims=[splits.num_classes])],
            preprocessing=pipeline.stats.to_spec(),
            labels=list(splits.classes),
        )

    def _publish(
        self,
        trainer: Trainer,
        splits: DatasetSplits,
        fit: FitResult,
        test: EvalMetrics,
        info: PublishInfo,
    ) -> tuple[int, float]:
        cfg = self.config
        shape = splits.input_shape
        config = self._served_config(splits, trainer.pipeline)
        with tempfile.TemporaryDirectory(prefix="headrace-export-") as tmp:
            onnx_path = export_onnx(trainer.model, shape, Path(tmp) / "model.onnx")
            diff = verify_onnx(trainer.model, onnx_path, shape)
            weights = save_weights(trainer.model, Path(tmp) / WEIGHTS_FILE)
            published = ModelRepository(cfg.repository).publish(
                config,
                onnx_path,
                architecture=cfg.model,
                architecture_options={"width": cfg.width, "dropout": cfg.dropout},
                extra_files={WEIGHTS_FILE: weights},
                metrics={
                    "test_accuracy": test.accuracy,
                    "test_balanced_accuracy": test.balanced_accuracy,
                    "test_loss": test.loss,
                    "val_loss": fit.best_val_loss,
                    "epochs_run": float(fit.epochs_run),
                    "onnx_max_abs_diff": diff,
                    **info.metrics,
                },
                lineage={
                    "dataset": cfg.dataset,
                    "seed": cfg.seed,
                    "val_fraction": cfg.val_fraction,  # with seed: the splits, reproducibly
                    "test_fraction": cfg.test_fraction,
                    "run_dir": str(self.run_dir),
                    "train_samples": len(splits.train),
                    "preprocess": cfg.preprocess.model_dump_json(),
                    "trained_at_unix": int(time.time()),
                    **splits.lineage,  # e.g. the shard bounds trained on
                    **cfg.lineage,
                    **info.lineage,
                },
                dp_epsilon=info.dp_epsilon,
                dp_delta=info.dp_delta,
                watermark_id=info.watermark_id,
            )
        return published.version, diff


def default_run_id() -> str:
    """A run id from the time (UTC), e.g. 20261201-143628."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def run_folder(config: TrainConfig) -> Path:
    """The folder a run keeps its checkpoint, logs and report in: the resumed run's, else
    `<runs_dir>/<model name>-<run id>` (a run id from the time when it has none)."""
    if config.resume is not None:
        return config.resume if config.resume.is_dir() else config.resume.parent
    return config.runs_dir / f"{config.model_name}-{config.run_id or default_run_id()}"


def run_training(
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainReport:
    """Run the whole recipe and return its report."""
    recipe = TrainRecipe(config, on_epoch, should_stop)
    try:
        recipe.setup()
        recipe.run()
        return recipe.save()
    finally:
        recipe.cleanup()
