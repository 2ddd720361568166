"""`fit_distributed`: train one config on Ray workers and hand back what single-process fit would.

The driver checks the config (training hooks are not supported on workers
yet), plans the parameter-server shards, runs the workers through
`ray_backend.run_on_ray` (progress to `on_epoch`, `should_stop` polled), and
reads the result from the checkpoint rank 0 wrote in `run_dir`. A run with a
checkpoint in `run_dir` continues from it.

Fault injection (tests only): with `HEADRACE_DISTRIBUTED_FAULT=rank=1,epoch=2`
in the driver's environment, worker 1 kills itself with SIGKILL at step 2 of
epoch 2, once per run folder (a `fault-injected` marker file records it), so
the retry from the checkpoint can be exercised against a real process death.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel

from headrace.errors import CheckpointError, ConfigError
from training.config import TrainConfig
from training.distributed.strategies import shard_layout
from training.distributed.worker import FaultPlan, WorkerSpec, checkpoint_summary
from training.hooks import build_hooks
from training.loop import EpochRecord, FitResult
from training.models import build_model

FAULT_ENV = "HEADRACE_DISTRIBUTED_FAULT"


class DistributedSummary(BaseModel):
    """What the distributed part of a run did."""

    strategy: str
    workers: int
    compression: str
    sync_every: int
    server_shards: int
    shard_params: list[int]
    attempts: int
    retries: int
    bytes_total: int
    control_bytes: int


@dataclass
class DistributedFit:
    """The outcome of `fit_distributed`."""

    best_state: dict[str, torch.Tensor]
    fit: FitResult
    bytes_per_epoch: list[int]
    summary: DistributedSummary


def check_distributed(config: TrainConfig) -> None:
    """Refuse configs the distributed engine cannot run, before any worker starts."""
    if config.distributed is None:
        raise ConfigError("fit_distributed needs config.distributed (workers, strategy)")
    if getattr(config, "privacy", None) is not None:
        from security.privacy import check_distributed_privacy  # opacus: load only when asked

        check_distributed_privacy(config.distributed.workers, config.distributed.strategy)
    hooks = build_hooks(config)
    if hooks:
        names = ", ".join(type(hook).__name__ for hook in hooks)
        raise ConfigError(
            f"distributed runs do not support training hooks yet ({names}); "
            "train with distributed.workers 1, or turn the adversarial/watermark options off"
        )


def _check_checkpoint(config: TrainConfig, run_dir: Path) -> None:
    state = checkpoint_summary(run_dir)
    if state is None:
        return
    if state.get("architecture") != config.model or state.get("dataset") != config.dataset:
        raise CheckpointError(
            f"the checkpoint in {run_dir} is for {state.get('architecture')!r} on "
            f"{state.get('dataset')!r}, not {config.model!r} on {config.dataset!r}; "
            "use a new run folder"
        )


def fit_distributed(
    config: TrainConfig,
    run_dir: Path,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DistributedFit:
    """Train `config` on `config.distributed.workers` Ray workers; see the module docstring."""
    from training.distributed.ray_backend import run_on_ray  # Ray loads only when used

    check_distributed(config)
    # Ray Train workers run in their own working directory: make paths absolute.
    run_dir = run_dir.resolve()
    if config.data_dir is not None:
        config = config.model_copy(update={"data_dir": config.data_dir.resolve()})
    if config.data_source is not None:
        root = config.data_source.resolved_root().resolve()
        source = config.data_source.model_copy(update={"root": root})
        config = config.model_copy(update={"data_source": source})
    dcfg = config.distributed
    assert dcfg is not None
    _check_checkpoint(config, run_dir)
    splits = config.load_splits()
    channels, size, _ = splits.input_shape
    model = build_model(
        config.model, splits.num_classes, channels, size, config.width, config.dropout
    )
    layout = shard_layout(model, dcfg.strategy, dcfg.server_shards)
    if dcfg.strategy != "allreduce" and not all(layout):
        raise ConfigError(
            f"{dcfg.strategy} with {dcfg.server_shards} server shards leaves a shard without "
            f"parameters ({config.model} has {sum(len(n) for n in layout)} to serve); "
            "use fewer server_shards"
        )
    params = dict(model.named_parameters())
    shapes = [[list(params[name].shape) for name in names] for names in layout]
    fault = os.environ.get(FAULT_ENV)
    spec = WorkerSpec(
        config=config,
        run_dir=run_dir,
        layout=layout,
        fault=FaultPlan.parse(fault) if fault else None,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run = run_on_ray(spec, shapes, on_epoch, should_stop)
    seconds = time.perf_counter() - started
    state = checkpoint_summary(run_dir)
    if state is None:
        raise CheckpointError(f"the workers finished without writing a checkpoint in {run_dir}")
    history = [EpochRecord(**record) for record in state["history"]]
    bytes_per_epoch = [int(b) for b in state.get("bytes_per_epoch", [])]
    fit = FitResult(
        epochs_run=int(state["epoch"]),
        best_epoch=int(state["best_epoch"]),
        best_val_loss=float(state["best_val_loss"]),
        stopped_early=bool(state.get("stopped_early", False)),
        history=history,
        train_seconds=seconds,
    )
    summary = DistributedSummary(
        strategy=dcfg.strategy,
        workers=dcfg.workers,
        compression=dcfg.compression.kind,
        sync_every=dcfg.sync_every,
        server_shards=len(layout),
        shard_params=[sum(params[name].numel() for name in names) for names in layout],
        attempts=run.attempts,
        retries=max(run.attempts - 1, 0),
        bytes_total=sum(bytes_per_epoch),
        control_bytes=int(state.get("control_bytes", 0)),
    )
    best_state = {name: tensor.detach().cpu() for name, tensor in state["best_state"].items()}
    return DistributedFit(best_state, fit, bytes_per_epoch, summary)
