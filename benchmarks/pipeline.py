"""Benchmark: the preprocessing pipeline on an imbalanced copy of a dataset.

Several classes of the training and validation splits are cut to a fraction of
their samples; the test split stays as it is. LeNet-5 is trained twice per
seed for the same number of epochs — raw pixels (baseline) and the pipeline
(augmentation + normalisation + class balancing) — and balanced accuracy on
the test split is compared. Prints a table and a final JSON line with
`baseline_balanced_acc`, `pipeline_balanced_acc`, `lift_points`, `ratio`,
`epochs` and `seeds`. The defaults take about half a minute on digits.

    python -m benchmarks.pipeline [--epochs 15] [--seeds 0 1 2] [--dataset digits]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.config import TrainConfig
from training.datasets import DatasetSplits, ImageArrays, load_splits
from training.evaluate import evaluate
from training.loop import Trainer
from training.models import build_model
from training.preprocess import BatchPipeline, PreprocessConfig


def cut_classes(
    arrays: ImageArrays, classes: list[int], keep_fraction: float, seed: int
) -> ImageArrays:
    """Keep only `keep_fraction` of the samples of each class in `classes`."""
    rng = np.random.default_rng(seed)
    keep = np.ones(len(arrays), dtype=bool)
    for c in classes:
        members = np.flatnonzero(arrays.labels == c)
        dropped = rng.permutation(members)[max(1, round(len(members) * keep_fraction)) :]
        keep[dropped] = False
    return arrays.subset(np.flatnonzero(keep))


def imbalanced_splits(
    splits: DatasetSplits, classes: list[int], keep_fraction: float, seed: int
) -> DatasetSplits:
    """Training and validation splits cut; the test split untouched."""
    return DatasetSplits(
        splits.name,
        splits.classes,
        cut_classes(splits.train, classes, keep_fraction, seed),
        cut_classes(splits.val, classes, keep_fraction, seed + 1),
        splits.test,
    )


def train_and_score(
    splits: DatasetSplits,
    preprocess: PreprocessConfig,
    epochs: int,
    seed: int,
    run_dir: Path,
    data_dir: Path | None,
) -> float:
    """Balanced test accuracy of LeNet-5 trained for exactly `epochs` epochs."""
    torch.manual_seed(seed)
    config = TrainConfig(
        dataset=splits.name,
        data_dir=data_dir,
        epochs=epochs,
        patience=0,
        seed=seed,
        preprocess=preprocess,
        publish=False,
        progress=False,
    )
    channels, size, _ = splits.input_shape
    model = build_model("lenet5", splits.num_classes, channels, size)
    pipeline = BatchPipeline(
        preprocess, splits.name, splits.train.images, splits.train.labels, splits.num_classes, seed
    )
    Trainer(model, splits, pipeline, config, run_dir).fit()
    return evaluate(model, splits.test, pipeline.eval_batch, splits.num_classes).balanced_accuracy


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", help="digits (embedded) or mnist")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder for file datasets")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cut-classes", type=int, nargs="+", default=[1, 3, 5, 7, 8])
    parser.add_argument("--keep-fraction", type=float, default=0.1)
    parser.add_argument("--balance", choices=["sampler", "loss"], default="sampler")
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep run folders here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    scratch = tempfile.TemporaryDirectory(prefix="headrace-bench-")
    runs_dir: Path = args.runs_dir or Path(scratch.name)
    pipeline_config = PreprocessConfig(balance=args.balance)
    rows: list[tuple[int, float, float, float]] = []
    for seed in args.seeds:
        splits = imbalanced_splits(
            load_splits(args.dataset, args.data_dir, seed=seed),
            args.cut_classes,
            args.keep_fraction,
            seed,
        )
        tic = time.perf_counter()
        base = train_and_score(
            splits,
            PreprocessConfig.off(),
            args.epochs,
            seed,
            runs_dir / f"base-{seed}",
            args.data_dir,
        )
        piped = train_and_score(
            splits,
            pipeline_config,
            args.epochs,
            seed,
            runs_dir / f"pipe-{seed}",
            args.data_dir,
        )
        rows.append((seed, base, piped, time.perf_counter() - tic))

    print(f"LeNet-5 on {args.dataset}, classes {args.cut_classes} cut to {args.keep_fraction:.0%}")
    print(f"{'seed':>4}  {'baseline bal.acc':>16}  {'pipeline bal.acc':>16}  {'seconds':>8}")
    for seed, base, piped, seconds in rows:
        print(f"{seed:>4}  {base:>16.4f}  {piped:>16.4f}  {seconds:>8.1f}")
    baseline = statistics.mean(r[1] for r in rows)
    pipeline = statistics.mean(r[2] for r in rows)
    print(f"mean  {baseline:>16.4f}  {pipeline:>16.4f}")
    print(f"lift: {100 * (pipeline - baseline):+.2f} points (ratio {pipeline / baseline:.3f})")
    result = {
        "baseline_balanced_acc": round(baseline, 4),
        "pipeline_balanced_acc": round(pipeline, 4),
        "lift_points": round(100 * (pipeline - baseline), 2),
        "ratio": round(pipeline / baseline, 4),
        "epochs": args.epochs,
        "seeds": len(rows),
    }
    print(json.dumps(result))
    scratch.cleanup()
    return result


if __name__ == "__main__":
    main()
