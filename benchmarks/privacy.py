"""Benchmark: what differential privacy costs in accuracy (DP-SGD with Opacus, LeNet-5).

LeNet-5 is trained on the seeded 80/10/10 split of the MNIST folder (10,000
images: 8,100 train, 900 validation, 1,000 test) and on the embedded digits
dataset, once without privacy (headrace's usual recipe: Adam, augmentation,
normalisation) and once per epsilon (1, 3, 8 at delta 1e-5) with the DP
defaults of training/privacy.py, all for the same number of epochs. The DP
settings are the same for every epsilon: the accountant picks the noise. Test
accuracy and the epsilon the accountant reports as spent are printed as a table
and a final JSON line (`nonprivate_acc`, `eps3_acc`, `eps3_spent`, ... for MNIST,
the same keys prefixed `digits_` for digits, `dp_settings` and `goals`). The
defaults took 12 to 14 minutes on the shared 2-core machine (docs/privacy.md);
`--epochs 1 --train-limit 1000` is a half-minute smoke run.

    python -m benchmarks.privacy [--mnist-dir ../shared/data/mnist] [--epochs 10]
        [--epsilons 1 3 8] [--train-limit N]   # --train-limit: a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from security.privacy import PrivacyConfig
from training.config import TrainConfig
from training.datasets import DatasetSplits, load_splits
from training.evaluate import evaluate
from training.hooks import PublishInfo, build_hooks
from training.loop import Trainer
from training.models import build_model
from training.preprocess import BatchPipeline
from training.privacy import DP_DEFAULTS

GOAL_POINTS = 5.0  # epsilon 3 within this many accuracy points of non-private (MNIST split)


@dataclass
class Row:
    """One training run's outcome."""

    dataset: str
    setting: str
    target_epsilon: float | None
    spent_epsilon: float | None
    noise_multiplier: float | None
    steps: int | None
    epochs_run: int
    test_accuracy: float
    seconds: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--datasets", nargs="+", default=["mnist", "digits"])
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0, 8.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--epochs", type=int, default=DP_DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, help="DP expected batch (default: DP default)")
    parser.add_argument("--lr", type=float, help="DP learning rate (default: DP default)")
    parser.add_argument("--max-grad-norm", type=float, help="DP clipping norm (default 1.0)")
    parser.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, help="Use only this many training images.")
    return parser.parse_args(argv)


def load(dataset: str, args: argparse.Namespace) -> DatasetSplits:
    data_dir = args.mnist_dir if dataset == "mnist" else None
    splits = load_splits(dataset, data_dir, args.seed, 0.1, 0.1)
    if args.train_limit is not None and args.train_limit < len(splits.train):
        keep = np.random.default_rng(args.seed).permutation(len(splits.train))[: args.train_limit]
        train = splits.train.subset(np.sort(keep))
        splits = DatasetSplits(splits.name, splits.classes, train, splits.val, splits.test)
    return splits


def train_and_score(splits: DatasetSplits, config: TrainConfig) -> tuple[float, PublishInfo, int]:
    """Fit with the config's hooks (the same Trainer as `headrace train`); test accuracy."""
    channels, size, _ = splits.input_shape
    torch.manual_seed(config.seed)
    model = build_model(config.model, splits.num_classes, channels, size)
    pipeline = BatchPipeline(
        config.preprocess,
        config.dataset,
        splits.train.images,
        splits.train.labels,
        splits.num_classes,
        config.seed,
    )
    with tempfile.TemporaryDirectory(prefix="bench-privacy-") as tmp:
        trainer = Trainer(model, splits, pipeline, config, Path(tmp), build_hooks(config))
        fit = trainer.fit()
    info = PublishInfo()
    for hook in trainer.hooks:
        info = info.merged(hook.publish_info(trainer.model))
    test = evaluate(trainer.model, splits.test, pipeline.eval_batch, splits.num_classes)
    return test.accuracy, info, fit.epochs_run


def run_one(
    dataset: str, splits: DatasetSplits, args: argparse.Namespace, epsilon: float | None
) -> Row:
    values: dict[str, Any] = {
        "dataset": dataset,
        "data_dir": args.mnist_dir if dataset == "mnist" else None,
        "epochs": args.epochs,
        "seed": args.seed,
        "progress": False,
        "publish": False,
    }
    if epsilon is not None:
        privacy: dict[str, Any] = {
            "target_epsilon": epsilon,
            "target_delta": args.delta,
            "accountant": args.accountant,
        }
        if args.max_grad_norm is not None:
            privacy["max_grad_norm"] = args.max_grad_norm
        values["privacy"] = privacy
        if args.batch_size is not None:
            values["batch_size"] = args.batch_size
        if args.lr is not None:
            values["learning_rate"] = args.lr
    config = TrainConfig(**values)
    started = time.perf_counter()
    accuracy, info, epochs_run = train_and_score(splits, config)
    steps = info.metrics.get("dp_steps")
    row = Row(
        dataset=dataset,
        setting="non-private" if epsilon is None else f"DP eps={epsilon:g}",
        target_epsilon=epsilon,
        spent_epsilon=info.dp_epsilon,
        noise_multiplier=info.metrics.get("dp_noise_multiplier"),
        steps=int(steps) if steps is not None else None,
        epochs_run=epochs_run,
        test_accuracy=accuracy,
        seconds=time.perf_counter() - started,
    )
    print(f"{dataset} {row.setting}: test accuracy {accuracy:.4f}", file=sys.stderr, flush=True)
    return row


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'dataset':<8} {'setting':<12} {'eps spent':>9} {'noise':>6} {'steps':>6} "
        f"{'epochs':>6} {'test acc':>8} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        spent = f"{r.spent_epsilon:.3f}" if r.spent_epsilon is not None else "-"
        noise = f"{r.noise_multiplier:.3f}" if r.noise_multiplier is not None else "-"
        steps = str(r.steps) if r.steps is not None else "-"
        print(
            f"{r.dataset:<8} {r.setting:<12} {spent:>9} {noise:>6} {steps:>6} "
            f"{r.epochs_run:>6} {r.test_accuracy:>8.4f} {r.seconds:>8.1f}"
        )


def key(dataset: str, name: str) -> str:
    return name if dataset == "mnist" else f"{dataset}_{name}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows: list[Row] = []
    result: dict[str, Any] = {}
    for dataset in args.datasets:
        splits = load(dataset, args)
        baseline = run_one(dataset, splits, args, None)
        rows.append(baseline)
        result[key(dataset, "nonprivate_acc")] = round(baseline.test_accuracy, 4)
        result[key(dataset, "train_samples")] = len(splits.train)
        for epsilon in args.epsilons:
            row = run_one(dataset, splits, args, epsilon)
            rows.append(row)
            name = f"eps{epsilon:g}".replace(".", "_")
            result[key(dataset, f"{name}_acc")] = round(row.test_accuracy, 4)
            result[key(dataset, f"{name}_spent")] = (
                round(row.spent_epsilon, 4) if row.spent_epsilon is not None else None
            )
    print_table(rows)
    dp_settings = {k: v for k, v in DP_DEFAULTS.items() if k != "epochs"}
    if args.batch_size is not None:
        dp_settings["batch_size"] = args.batch_size
    if args.lr is not None:
        dp_settings["learning_rate"] = args.lr
    result["dp_settings"] = {
        **dp_settings,
        "max_grad_norm": args.max_grad_norm or PrivacyConfig.model_fields["max_grad_norm"].default,
        "delta": args.delta,
        "accountant": args.accountant,
    }
    result["epochs"] = args.epochs
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    eps3, plain = result.get("eps3_acc"), result.get("nonprivate_acc")
    within = eps3 is not None and plain is not None and (plain - eps3) * 100 <= GOAL_POINTS
    result["goals"] = {"eps3_within_5_points": bool(within)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
