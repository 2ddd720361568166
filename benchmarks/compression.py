"""Benchmark: what compression costs in accuracy and gains in size and speed, on ONNX Runtime.

One run, one dataset split (the embedded digits by default):

- the float32 baseline: LeNet-5 trained with `headrace train`'s defaults
  (`--epochs` 50 at most, early stopping) and `--seed`, published to a scratch
  repository;
- `headrace compress` three times from it: int8 QAT, int4 QAT (`--qat-epochs`
  each) and 50% L1 channel pruning with `--prune-epochs` of fine-tuning;
- `headrace compress report` over the four versions: test accuracy of each
  ONNX file on ONNX Runtime, file size, stored weights, and latency at batch 1
  and 64 (all files timed in interleaved rounds, one thread, after warm-up,
  `--latency-seconds` per file and batch size).

Size ratio = compressed ONNX file bytes / float32 ONNX file bytes.
`pruned_param_ratio` = parameters of the pruned model / the original's.
`pruned_latency_ratio` = pruned latency / original latency at batch 64
(`pruned_latency_ratio_b1` at batch 1). Accuracy losses are in points.

Prints the report table and, last, one JSON line with `fp32_acc`, `int8_acc`,
`int4_acc`, `int8_size_ratio`, `int4_size_ratio`, `pruned_param_ratio`,
`pruned_latency_ratio` and `goals`. The defaults take about a minute
(docs/compression.md); `--quick` a few seconds.

    python -m benchmarks.compression [--dataset digits|mnist] [--mnist-dir DIR]
        [--epochs 50] [--qat-epochs 5] [--prune-epochs 20] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from serving.repository import ModelRepository
from training.compression.config import CompressConfig
from training.compression.recipe import CompressReport, compress_published
from training.compression.report import ReportRow, build_report, format_report
from training.config import TrainConfig
from training.recipe import run_training

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = "bench-lenet5"
LATENCY_BATCH = 64


def _compress(root: Path, common: dict[str, Any], **settings: Any) -> CompressReport:
    config = CompressConfig(source=NAME, repository=root, **common, **settings)
    report = compress_published(config)
    print(
        f"{report.compression}: version {report.version}, ONNX Runtime test accuracy "
        f"{report.test_accuracy:.4f}, {report.model_bytes} bytes, {report.parameters} parameters",
        file=sys.stderr,
    )
    return report


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    started = time.perf_counter()
    load_before = os.getloadavg()
    data_dir = args.mnist_dir if args.dataset == "mnist" else None
    train = run_training(
        TrainConfig(
            model="lenet5",
            dataset=args.dataset,
            data_dir=data_dir,
            epochs=args.epochs,
            seed=args.seed,
            name=NAME,
            repository=root,
            runs_dir=root / "runs",
            progress=False,
        )
    )
    print(f"float32: {train.epochs_run} epochs, torch test accuracy {train.test_accuracy:.4f}",
          file=sys.stderr)  # fmt: skip
    common: dict[str, Any] = {
        "source_version": train.version,
        "runs_dir": root / "runs",
        "data_dir": data_dir,
        "latency_seconds": 0.05,  # the report below measures latency for the table
        "progress": False,
    }
    int8 = _compress(root, common, quant="int8", qat_epochs=args.qat_epochs)
    int4 = _compress(root, common, quant="int4", qat_epochs=args.qat_epochs)
    pruned = _compress(root, common, prune="l1", sparsity=args.sparsity, epochs=args.prune_epochs)
    report = build_report(ModelRepository(root), NAME, data_dir, args.latency_seconds)
    print(format_report(report))
    rows: dict[str, ReportRow] = {row.ref: row for row in report.rows}
    fp32 = rows[f"{NAME}:{train.version}"]
    by_version = {r.version: rows[f"{NAME}:{r.version}"] for r in (int8, int4, pruned)}
    q8, q4, pr = (by_version[r.version] for r in (int8, int4, pruned))
    assert fp32.accuracy is not None and q8.accuracy is not None and q4.accuracy is not None
    assert pr.accuracy is not None
    result: dict[str, Any] = {
        "fp32_acc": fp32.accuracy,
        "int8_acc": q8.accuracy,
        "int4_acc": q4.accuracy,
        "int8_size_ratio": q8.model_bytes / fp32.model_bytes,
        "int4_size_ratio": q4.model_bytes / fp32.model_bytes,
        "pruned_param_ratio": pruned.parameters / pruned.source_parameters,
        "pruned_latency_ratio": pr.latency_s[LATENCY_BATCH] / fp32.latency_s[LATENCY_BATCH],
        "latency_batch": LATENCY_BATCH,
        "pruned_latency_ratio_b1": pr.latency_s[1] / fp32.latency_s[1],
        "pruned_acc": pr.accuracy,
        "int8_latency_ratio": q8.latency_s[LATENCY_BATCH] / fp32.latency_s[LATENCY_BATCH],
        "int4_latency_ratio": q4.latency_s[LATENCY_BATCH] / fp32.latency_s[LATENCY_BATCH],
        "fp32_bytes": fp32.model_bytes,
        "int8_bytes": q8.model_bytes,
        "int4_bytes": q4.model_bytes,
        "test_samples": fp32.test_samples,
        "dataset": args.dataset,
        "seed": args.seed,
        "fp32_epochs": train.epochs_run,
        "seconds": round(time.perf_counter() - started, 1),
        "load_avg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    int8_loss = 100 * (fp32.accuracy - q8.accuracy)
    int4_loss = 100 * (fp32.accuracy - q4.accuracy)
    result["goals"] = {
        "int8_loss_lt_0.5pt": int8_loss < 0.5,
        "int8_size_le_1/3.5": result["int8_size_ratio"] <= 1 / 3.5,
        "int4_loss_lt_1pt": int4_loss < 1.0,
        "int4_size_le_1/6": result["int4_size_ratio"] <= 1 / 6,
        "pruned_fewer_params": result["pruned_param_ratio"] < 1.0,
        "pruned_faster": result["pruned_latency_ratio"] < 1.0,
    }
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    parser.add_argument("--mnist-dir", type=Path, default=REPO_ROOT.parent / "shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=50, help="float32 training, at most")
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--prune-epochs", type=int, default=20, help="fine-tuning after pruning")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-seconds", type=float, default=2.0, help="per file and batch")
    parser.add_argument("--repository", type=Path, help="keep the models here (default: temp)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test sizes: 2 epochs, 1 QAT and 1 pruning epoch, 0.05 s",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.qat_epochs, args.prune_epochs, args.latency_seconds = 2, 1, 1, 0.05
    if args.repository is not None:
        result = run(args, args.repository)
    else:
        with tempfile.TemporaryDirectory(prefix="headrace-bench-compress-") as tmp:
            result = run(args, Path(tmp))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
