"""Distributed training on a real local Ray (2 CPUs): strategies, bytes, crash retry, cancel.

One Ray instance for the module. Each strategy trains LeNet-5 on digits with
two workers and must reach the single-process test accuracy (same config and
seed, `Trainer`) within one point; byte counts are checked against the sizes
the strategy must send; a worker SIGKILLed mid-epoch is retried from the
checkpoint; `should_stop` cancels a run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch

from headrace.errors import JobCancelled
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.datasets import DatasetSplits, load_splits
from training.distributed import fit_distributed
from training.distributed.fit import FAULT_ENV
from training.distributed.worker import FAULT_MARKER, pid_file
from training.evaluate import evaluate
from training.loop import EpochRecord, Trainer
from training.models import build_model
from training.preprocess import BatchPipeline

EPOCHS = 10
WORKERS = 2
SETTINGS = {
    "epochs": EPOCHS,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "lr_schedule": "cosine",
    "publish": False,
    "progress": False,
}


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def _config(tmp: Path, epochs: int = EPOCHS, **distributed: object) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            **SETTINGS,
            "epochs": epochs,
            "runs_dir": tmp,
            "distributed": {"workers": WORKERS, **distributed},
        }
    )


def _splits(config: TrainConfig) -> tuple[DatasetSplits, BatchPipeline]:
    splits = load_splits(
        config.dataset, None, config.seed, config.val_fraction, config.test_fraction
    )
    pipeline = BatchPipeline(
        config.preprocess,
        config.dataset,
        splits.train.images,
        splits.train.labels,
        splits.num_classes,
        config.seed,
    )
    return splits, pipeline


def _test_accuracy(config: TrainConfig, state: dict[str, torch.Tensor]) -> float:
    splits, pipeline = _splits(config)
    model = build_model(config.model, splits.num_classes, 1, 28)
    model.load_state_dict(state)
    return evaluate(model, splits.test, pipeline.eval_batch, splits.num_classes).accuracy


@pytest.fixture(scope="module")
def single_process_accuracy(tmp_path_factory: pytest.TempPathFactory) -> float:
    config = TrainConfig.model_validate({**SETTINGS, "runs_dir": tmp_path_factory.mktemp("single")})
    splits, pipeline = _splits(config)
    torch.manual_seed(config.seed)
    model = build_model(config.model, splits.num_classes, 1, 28)
    Trainer(model, splits, pipeline, config, config.runs_dir / "run").fit()
    return evaluate(model, splits.test, pipeline.eval_batch, splits.num_classes).accuracy


def _steps_per_epoch(config: TrainConfig) -> int:
    splits, _ = _splits(config)
    per_worker = len(splits.train) // WORKERS
    return math.ceil(per_worker / (config.batch_size // WORKERS))


LENET_PARAMS = 61_706


@pytest.mark.parametrize(
    ("strategy", "shards"), [("allreduce", 1), ("parameter_server", 2), ("hybrid", 1)]
)
def test_strategy_reaches_single_process_accuracy(
    strategy: str, shards: int, single_process_accuracy: float, tmp_path: Path
) -> None:
    config = _config(tmp_path, strategy=strategy, server_shards=shards)
    seen: list[EpochRecord] = []
    result = fit_distributed(config, tmp_path / "run", on_epoch=seen.append)
    accuracy = _test_accuracy(config, result.best_state)
    assert accuracy >= single_process_accuracy - 0.01, (accuracy, single_process_accuracy)
    assert [r.epoch for r in seen] == [r.epoch for r in result.fit.history]
    assert result.fit.epochs_run == len(result.bytes_per_epoch) >= 6
    steps = _steps_per_epoch(config)
    if strategy == "allreduce":  # every worker allreduces the whole float32 gradient each step
        expected = WORKERS * steps * LENET_PARAMS * 4
    elif strategy == "parameter_server":  # pushes float32 gradients, pulls float32 weights
        expected = WORKERS * steps * LENET_PARAMS * 4 * 2
    else:  # Linear layers (59,134 params) push + pull; the convolutions (2,572) allreduce
        expected = WORKERS * steps * (59_134 * 4 * 2 + 2_572 * 4)
    assert result.bytes_per_epoch == [expected] * result.fit.epochs_run
    assert [r.bytes_communicated for r in seen] == result.bytes_per_epoch
    assert result.summary.strategy == strategy and result.summary.retries == 0


@pytest.mark.slow  # ~90 s of Ray Train restarts; `make test-slow` runs it
def test_a_killed_worker_is_retried_from_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_ENV, "rank=1,epoch=2,step=3")
    config = _config(tmp_path, epochs=3, compression={"kind": "topk", "ratio": 0.01})
    seen: list[int] = []
    result = fit_distributed(config, tmp_path / "run", on_epoch=lambda r: seen.append(r.epoch))
    assert (tmp_path / "run" / FAULT_MARKER).is_file()  # the worker really was killed
    assert result.summary.attempts == 2 and result.summary.retries == 1
    assert seen == [1, 2, 3] and result.fit.epochs_run == 3
    assert int(pid_file(tmp_path / "run", 1).read_text()) > 0
    uncompressed = WORKERS * _steps_per_epoch(config) * LENET_PARAMS * 4
    assert all(0 < b * 10 < uncompressed for b in result.bytes_per_epoch)


def test_should_stop_cancels_the_run(tmp_path: Path) -> None:
    config = _config(tmp_path, strategy="parameter_server", compression="fp16")
    seen: list[EpochRecord] = []
    asked: list[float] = []

    def should_stop() -> bool:
        if seen and not asked:
            asked.append(time.monotonic())
        return bool(seen)

    with pytest.raises(JobCancelled):
        fit_distributed(config, tmp_path / "run", on_epoch=seen.append, should_stop=should_stop)
    assert time.monotonic() - asked[0] < 30
    assert int(load_checkpoint(tmp_path / "run")["epoch"]) < EPOCHS
