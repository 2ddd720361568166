"""The training loop: in-memory epochs, validation, early stopping, checkpoints, TensorBoard.

`Trainer.fit` runs until the epoch budget or early stopping ends it, writing a
checkpoint after every epoch so `resume` continues where a run stopped. The
best weights (lowest validation loss) are restored at the end.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from headrace.errors import CheckpointError, TrainingDiverged
from training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.datasets.base import DatasetSplits
from training.evaluate import evaluate
from training.hooks import TrainingHook
from training.preprocess import BatchPipeline


class EpochRecord(BaseModel):
    """What one epoch did; also the payload of progress callbacks."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    samples_per_s: float
    bytes_communicated: int | None = Field(
        default=None, description="Bytes all workers sent in the epoch (distributed runs), counted."
    )


class FitResult(BaseModel):
    """The outcome of `Trainer.fit`."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    history: list[EpochRecord]
    train_seconds: float


EpochCallback = Callable[[EpochRecord], None]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer the config asks for."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The learning-rate schedule the config asks for; stepped once per epoch."""
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


DISTRIBUTED_MARK = "bytes_per_epoch"
"""A key only checkpoints of distributed runs hold (`training.distributed.worker`): their
optimizer state is kept per worker or per server shard, not in this loop's format."""


def resume_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint: the model, the data and
    its splits, preprocessing and the optimisation (the optimizer's restored state holds
    the learning rate; a different one would be silently ignored)."""
    names = (
        "width", "dropout", "dataset", "seed", "val_fraction", "test_fraction", "batch_size",
        "learning_rate", "optimizer", "momentum", "weight_decay", "lr_schedule",
    )  # fmt: skip
    settings: dict[str, Any] = {name: getattr(config, name) for name in names}
    settings["preprocess"] = config.preprocess.model_dump(mode="json")
    return settings


class Trainer:
    """Fits one model on one dataset's splits with one preprocessing pipeline."""

    def __init__(
        self,
        model: nn.Module,
        splits: DatasetSplits,
        pipeline: BatchPipeline,
        config: TrainConfig,
        run_dir: Path,
        hooks: list[TrainingHook] | None = None,
    ) -> None:
        self.model = model
        self.splits = splits
        self.pipeline = pipeline
        self.config = config
        self.run_dir = run_dir
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.loss_weights = pipeline.loss_weights()
        self.epoch = 0
        self.best_val_loss = float("inf")
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
        self.bad_epochs = 0
        self.history: list[EpochRecord] = []
        self.hooks = list(hooks or [])
        for hook in self.hooks:
            hook.attach(self)

    # -- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to resume, as tensors and plain values (loadable with weights_only)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "epoch": self.epoch,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "generator": self.pipeline.generator.get_state(),
            "history": [record.model_dump() for record in self.history],
            "architecture": self.config.model,
            "dataset": self.config.dataset,
            "settings": resume_settings(self.config),
            "hooks": {type(hook).__name__: hook.state_dict() for hook in self.hooks},
        }

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint written by `state()`."""
        state = load_checkpoint(path)
        if DISTRIBUTED_MARK in state:
            raise CheckpointError(
                f"checkpoint {path} was written by a distributed training job; `headrace train "
                "--resume` continues single-process runs only (the agent resumes a distributed "
                "job from it when it retries or restarts the job)"
            )
        if state.get("architecture") != self.config.model:
            raise CheckpointError(
                f"checkpoint is for model {state.get('architecture')!r}, not {self.config.model!r}"
            )
        stored = state.get("settings") or {"dataset": state.get("dataset", self.config.dataset)}
        now = resume_settings(self.config)
        changed = [
            f"{name} {stored[name]!r} (now {now[name]!r})"
            for name in stored
            if name in now and stored[name] != now[name]
        ]
        if changed:
            raise CheckpointError(
                f"checkpoint {path} was trained with {', '.join(changed)}; resume with the "
                "run's own settings (the optimizer's state, the schedule and the data splits "
                "come from them), or start a new run"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler"):
                self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint does not fit this model: {exc}") from exc
        self.epoch = int(state["epoch"])
        self.best_val_loss = float(state["best_val_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.best_state = state["best_state"]
        self.bad_epochs = int(state["bad_epochs"])
        self.pipeline.generator.set_state(state["generator"])
        self.history = [EpochRecord(**record) for record in state["history"]]
        hook_states = state.get("hooks", {})
        for hook in self.hooks:
            hook.load_state_dict(hook_states.get(type(hook).__name__, {}))

    # -- training ----------------------------------------------------------------------------

    def _train_epoch(self, bar: tqdm[Any] | None) -> tuple[float, float, int]:
        self.model.train()
        train = self.splits.train
        images = torch.from_numpy(train.images)
        labels = torch.from_numpy(train.labels)
        total_loss, correct, seen = 0.0, 0, 0
        for index in self._epoch_batches():
            inputs = self.pipeline.train_batch(images[index])
            targets = labels[index]
            for hook in self.hooks:
                inputs, targets = hook.on_batch(self.model, inputs, targets)
            logits = self.model(inputs)
            if len(targets) == 0:  # Poisson sampling (DP) may draw an empty batch: a step
                loss = logits.sum() * 0.0  # of noise only, whose loss must not be NaN
            else:
                loss = F.cross_entropy(logits, targets, weight=self.loss_weights)
            for hook in self.hooks:
                for extra in (
                    hook.extra_loss(self.model),
                    hook.logits_loss(self.model, inputs, targets, logits),
                ):
                    if extra is not None:
                        loss = loss + extra
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += float(loss.detach()) * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
            if bar is not None:
                bar.update(len(index))
                bar.set_postfix(loss=f"{total_loss / max(seen, 1):.4f}")
        return total_loss / max(seen, 1), correct / max(seen, 1), seen

    def _epoch_batches(self) -> Iterator[torch.Tensor]:
        """One epoch's index batches: a hook's (DP's Poisson sampling) or shuffled slices."""
        for hook in self.hooks:
            batches = hook.epoch_batches()
            if batches is not None:
                yield from batches
                return
        order = self.pipeline.epoch_order()
        for start in range(0, len(order), self.config.batch_size):
            yield torch.from_numpy(
                np.ascontiguousarray(order[start : start + self.config.batch_size])
            )

    def fit(
        self, on_epoch: EpochCallback | None = None, should_stop: Callable[[], bool] | None = None
    ) -> FitResult:
        """Train until the epoch budget, early stopping or `should_stop()` (asked after each
        epoch, e.g. by a tuning assessor); restores the best weights."""
        if self.config.resume is not None:
            self.restore(self.config.resume)
        started = time.perf_counter()
        stopped_early = self._patience_exhausted()
        with SummaryWriter(log_dir=str(self.run_dir / "tensorboard")) as writer:
            while self.epoch < self.config.epochs and not stopped_early:
                record = self._run_epoch(writer)
                self.history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
                save_checkpoint(checkpoint_path(self.run_dir), self.state())
                stopped_early = self._patience_exhausted() or bool(should_stop and should_stop())
        for hook in self.hooks:
            hook.detach(self)
        self.model.load_state_dict(self.best_state)
        return FitResult(
            epochs_run=self.epoch,
            best_epoch=self.best_epoch,
            best_val_loss=self.best_val_loss,
            stopped_early=stopped_early,
            history=self.history,
            train_seconds=time.perf_counter() - started,
        )

    def _patience_exhausted(self) -> bool:
        return self.config.patience > 0 and self.bad_epochs >= self.config.patience

    def _run_epoch(self, writer: SummaryWriter) -> EpochRecord:
        self.epoch += 1
        tic = time.perf_counter()
        bar = None
        if self.config.progress:
            bar = tqdm(
                total=len(self.splits.train),
                desc=f"epoch {self.epoch}/{self.config.epochs}",
                unit="img",
                leave=False,
                disable=not sys.stderr.isatty(),
            )
        try:
            train_loss, train_acc, seen = self._train_epoch(bar)
        finally:
            if bar is not None:
                bar.close()
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"training loss became {train_loss} in epoch {self.epoch}; "
                "lower the learning rate (--lr) or enable --normalize"
            )
        val = evaluate(
            self.model, self.splits.val, self.pipeline.eval_batch, self.splits.num_classes
        )
        selection = val.loss  # a hook may select on another loss (e.g. under attack)
        for hook in self.hooks:
            replaced = hook.selection_loss(self.model)
            selection = replaced if replaced is not None else selection
        seconds = time.perf_counter() - tic
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(selection)
        elif self.scheduler is not None:
            self.scheduler.step()
        if selection < self.best_val_loss:
            self.best_val_loss, self.best_epoch, self.bad_epochs = selection, self.epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.bad_epochs += 1
        record = EpochRecord(
            epoch=self.epoch,
            train_loss=train_loss,
            train_accuracy=train_acc,
            val_loss=val.loss,
            val_accuracy=val.accuracy,
            seconds=seconds,
            samples_per_s=seen / seconds if seconds > 0 else 0.0,
        )
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "samples_per_s"):
            writer.add_scalar(key.replace("_", "/", 1), getattr(record, key), self.epoch)
        if self.config.progress:
            tqdm.write(
                f"epoch {self.epoch}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                f"val loss {val.loss:.4f} acc {val.accuracy:.4f} | "
                f"{record.samples_per_s:.0f} img/s",
                file=sys.stderr,
            )
        return record
