"""The training loop of one distributed worker; it needs torch.distributed, not Ray.

`run_worker(spec, env)` expects an initialised default process group (gloo):
Ray Train sets one up in `ray_backend.py`, `standalone.py` does it with a TCP
rendezvous. Semantics follow `training.loop.Trainer`:

- Data: every worker loads the same splits and builds the same model (same
  seed). Each epoch's order is drawn from a generator seeded by (seed, epoch),
  identical on all ranks; the tail that does not divide by the worker count is
  dropped and rank r takes every world-th index from r. `batch_size` is the
  global batch: each worker steps on `batch_size // workers` images, so the
  steps per epoch and the effective batch match single-process training.
  Augmentation draws from a generator seeded by (seed, epoch, rank).
- Each epoch: train steps (the strategy's `Synchronizer`), end-of-epoch sync
  (buffers, local-SGD average), the epoch's sums and byte counts allreduced,
  validation on rank 0 broadcast to all, schedulers stepped, best weights kept,
  early stopping by patience, and rank 0 writes `<run_dir>/checkpoint.pt`.
- A (re)started worker continues from that checkpoint: this is how a crash is
  retried. Compression residuals are not checkpointed; they restart at zero.
- Every `STOP_CHECK_STEPS` steps rank 0 asks the env whether to stop and
  broadcasts the answer, so all ranks leave at the same step.

Bytes: `bytes_communicated` of an epoch is the sum over workers of what the
strategy handed to collectives (counting group) or pushed to / pulled from the
parameter servers. Bookkeeping collectives (the epoch sums, the validation
broadcast, stop flags) go through a second counter, reported separately.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from headrace.errors import ConfigError
from training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.distributed.counting import ByteCounter, CountingGroup
from training.distributed.interfaces import WorkerEnv
from training.distributed.strategies import (
    AllreduceSync,
    LocalSgdSync,
    ServerSync,
    Synchronizer,
)
from training.evaluate import evaluate
from training.loop import EpochRecord
from training.models import build_model
from training.preprocess import BatchPipeline, balanced_indices

STOP_CHECK_STEPS = 10
FAULT_MARKER = "fault-injected"


def pid_file(run_dir: Path, rank: int) -> Path:
    """Where worker `rank` writes its process id when it starts (for operators and tests)."""
    return run_dir / f"worker-{rank}.pid"


class FaultPlan(BaseModel):
    """Test aid: worker `rank` SIGKILLs itself once, at `step` of `epoch` (see docs)."""

    model_config = ConfigDict(extra="forbid")
    rank: int = Field(ge=0)
    epoch: int = Field(ge=1)
    step: int = Field(default=2, ge=0)

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """`rank=1,epoch=2[,step=3]`."""
        try:
            fields = dict(part.split("=", 1) for part in text.split(",") if part.strip())
            return cls.model_validate({k.strip(): int(v) for k, v in fields.items()})
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"fault plan {text!r} is not like rank=1,epoch=2[,step=3]: {exc}"
            ) from None


class WorkerSpec(BaseModel):
    """Everything a worker needs, sent to it as JSON."""

    config: TrainConfig
    run_dir: Path
    layout: list[list[str]] = Field(
        default_factory=list, description="Parameter names of each server shard."
    )
    fault: FaultPlan | None = None


def _mix(*values: int) -> int:
    """A seed from several integers (stable across processes, unlike hash())."""
    seed = 0
    for value in values:
        seed = (seed * 1_000_003 + value) % (2**62)
    return seed


def epoch_shard(
    pipeline: BatchPipeline, seed: int, epoch: int, rank: int, world: int
) -> np.ndarray:
    """This rank's indices of the epoch's order (same order on every rank)."""
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    if pipeline.config.balance == "sampler":
        order = balanced_indices(pipeline.labels, pipeline.num_classes, generator)
    else:
        order = torch.randperm(len(pipeline.labels), generator=generator).numpy()
    usable = len(order) - len(order) % world
    return np.ascontiguousarray(order[:usable][rank::world])


def _build_sync(
    spec: WorkerSpec,
    model: torch.nn.Module,
    env: WorkerEnv,
    group: dist.ProcessGroup,
    raw: dist.ProcessGroup,
    counter: ByteCounter,
) -> Synchronizer:
    cfg = spec.config
    assert cfg.distributed is not None
    if cfg.distributed.strategy == "allreduce":
        if cfg.distributed.sync_every > 1:
            return LocalSgdSync(model, cfg, group)
        return AllreduceSync(model, cfg, group, raw)
    if env.servers is None:
        raise ConfigError(
            f"strategy {cfg.distributed.strategy} needs parameter-server actors (Ray)"
        )
    return ServerSync(model, cfg, group, raw, env.servers, spec.layout, counter)


class _Worker:
    """The state of one worker across epochs."""

    def __init__(self, spec: WorkerSpec, env: WorkerEnv) -> None:
        cfg = spec.config
        self.spec, self.env, self.cfg = spec, env, cfg
        self.rank, self.world = env.rank, env.world_size
        raw = dist.group.WORLD
        assert raw is not None, "the default process group must be initialised"
        self.counter, self.control_counter = ByteCounter(), ByteCounter()
        self.group = CountingGroup(raw, self.counter)
        self.control = CountingGroup(raw, self.control_counter)
        self.splits = cfg.load_splits()
        channels, size, _ = self.splits.input_shape
        torch.manual_seed(cfg.seed)
        self.model = build_model(
            cfg.model, self.splits.num_classes, channels, size, cfg.width, cfg.dropout
        )
        self.pipeline = BatchPipeline(
            cfg.preprocess,
            cfg.dataset,
            self.splits.train.images,
            self.splits.train.labels,
            self.splits.num_classes,
            cfg.seed,
        )
        self.loss_weights = self.pipeline.loss_weights()
        self.batch = max(1, cfg.batch_size // self.world)
        self.sync = _build_sync(spec, self.model, env, self.group, raw, self.counter)
        self.epoch, self.bad_epochs, self.best_epoch = 0, 0, 0
        self.best_val_loss = float("inf")
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.history: list[EpochRecord] = []
        self.bytes_per_epoch: list[int] = []
        self.control_bytes = 0

    # -- start / checkpoints ------------------------------------------------------------------

    def start(self) -> None:
        path = checkpoint_path(self.spec.run_dir)
        state = load_checkpoint(path) if path.is_file() else None
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.epoch = int(state["epoch"])
            self.best_val_loss = float(state["best_val_loss"])
            self.best_epoch = int(state["best_epoch"])
            self.best_state = state["best_state"]
            self.bad_epochs = int(state["bad_epochs"])
            self.history = [EpochRecord(**record) for record in state["history"]]
            self.bytes_per_epoch = [int(b) for b in state.get("bytes_per_epoch", [])]
            self.control_bytes = int(state.get("control_bytes", 0))
        generation = torch.tensor([time.time_ns() % 2**52 if self.rank == 0 else 0])
        dist.broadcast(generation, group_src=0, group=self.control)
        self.sync.start(state, self.rank, int(generation.item()))

    def _save(self) -> None:
        save_checkpoint(
            checkpoint_path(self.spec.run_dir),
            {
                "model": self.model.state_dict(),
                **self.sync.state(),
                "epoch": self.epoch,
                "best_val_loss": self.best_val_loss,
                "best_epoch": self.best_epoch,
                "best_state": self.best_state,
                "bad_epochs": self.bad_epochs,
                "generator": self.pipeline.generator.get_state(),
                "history": [record.model_dump() for record in self.history],
                "bytes_per_epoch": self.bytes_per_epoch,
                "control_bytes": self.control_bytes,
                "stopped_early": self.patience_exhausted(),
                "architecture": self.cfg.model,
                "dataset": self.cfg.dataset,
            },
        )

    # -- the loop -----------------------------------------------------------------------------

    def patience_exhausted(self) -> bool:
        return self.cfg.patience > 0 and self.bad_epochs >= self.cfg.patience

    def stop_agreed(self) -> bool:
        flag = torch.tensor([1 if self.rank == 0 and self.env.stop_requested() else 0])
        dist.broadcast(flag, group_src=0, group=self.control)
        return bool(flag.item())

    def _maybe_fault(self, step: int) -> None:
        plan = self.spec.fault
        if plan is None or (plan.rank, plan.epoch, plan.step) != (self.rank, self.epoch, step):
            return
        marker = self.spec.run_dir / FAULT_MARKER
        if not marker.exists():
            marker.write_text(f"rank {self.rank} killed itself at epoch {self.epoch} step {step}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    def run(self) -> str:
        """Train until the budget, early stopping or a stop request; returns the outcome."""
        while self.epoch < self.cfg.epochs and not self.patience_exhausted():
            outcome = self._epoch()
            if outcome != "ok":
                return outcome
        return "finished"

    def _epoch(self) -> str:
        self.epoch += 1
        tic = time.perf_counter()
        shard = epoch_shard(self.pipeline, self.cfg.seed, self.epoch, self.rank, self.world)
        self.pipeline.generator = torch.Generator().manual_seed(
            _mix(self.cfg.seed, self.epoch, self.rank)
        )
        images = torch.from_numpy(self.splits.train.images)
        labels = torch.from_numpy(self.splits.train.labels)
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for step, start in enumerate(range(0, len(shard), self.batch)):
            if step % STOP_CHECK_STEPS == 0 and self.stop_agreed():
                return "cancelled"
            self._maybe_fault(step)
            index = torch.from_numpy(shard[start : start + self.batch])
            inputs = self.pipeline.train_batch(images[index])
            targets = labels[index]
            logits = self.sync.forward(inputs)
            loss = F.cross_entropy(logits, targets, weight=self.loss_weights)
            self.sync.zero_grad()
            loss.backward()
            self.sync.step()
            loss_sum += float(loss.detach()) * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
        self.sync.finish_epoch()
        totals = torch.tensor([loss_sum, correct, seen, self.counter.take()], dtype=torch.float64)
        dist.all_reduce(totals, group=self.control)
        train_loss = float(totals[0]) / max(float(totals[2]), 1.0)
        if not math.isfinite(train_loss):
            return (
                f"diverged: training loss became {train_loss} in epoch {self.epoch}; "
                "lower the learning rate (--lr) or enable --normalize"
            )
        val = torch.zeros(2, dtype=torch.float64)
        if self.rank == 0:
            metrics = evaluate(
                self.model, self.splits.val, self.pipeline.eval_batch, self.splits.num_classes
            )
            val = torch.tensor([metrics.loss, metrics.accuracy], dtype=torch.float64)
        dist.broadcast(val, group_src=0, group=self.control)
        val_loss, val_accuracy = float(val[0]), float(val[1])
        self.sync.end_epoch(val_loss)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, self.epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.bad_epochs += 1
        seconds = time.perf_counter() - tic
        record = EpochRecord(
            epoch=self.epoch,
            train_loss=train_loss,
            train_accuracy=float(totals[1]) / max(float(totals[2]), 1.0),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            seconds=seconds,
            samples_per_s=float(totals[2]) / seconds if seconds > 0 else 0.0,
            bytes_communicated=int(totals[3]),
        )
        self.history.append(record)
        self.bytes_per_epoch.append(int(totals[3]))
        self.control_bytes += self.control_counter.take()
        if self.rank == 0:
            self._save()
            self.env.report(record)
        return "ok"


def run_worker(spec: WorkerSpec, env: WorkerEnv) -> str:
    """One worker's whole run; returns finished, cancelled or diverged: <why>."""
    torch.set_num_threads(1)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    pid_file(spec.run_dir, env.rank).write_text(f"{os.getpid()}\n")
    worker = _Worker(spec, env)
    worker.start()
    outcome = worker.run()
    if env.rank == 0:
        env.finish(outcome)
    return outcome


def checkpoint_summary(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint a distributed run left in `run_dir`, or None."""
    path = checkpoint_path(run_dir)
    return load_checkpoint(path) if path.is_file() else None
