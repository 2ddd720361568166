"""Benchmark: does the watermark verify where it should, and only there?

One run, all on one dataset split (the real MNIST split by default, or the
embedded digits):

- a key (`headrace watermark keygen` defaults: 100 triggers, 64 signature bits);
- the marked model: LeNet-5 trained `--epochs` epochs with the watermark
  (seed 0) and the unmarked baseline with the same seed and epochs (accuracy
  cost = baseline test accuracy - marked test accuracy, in points);
- `--unmarked` unmarked models in all (seeds 0, 1, ...; the baseline is the first);
- attacks on the marked model: `--finetune-epochs` epoch(s) of clean
  fine-tuning (clean training data, no triggers, the training learning rate),
  and global magnitude pruning of `--prune` of all conv and linear weights
  (torch.nn.utils.prune, made permanent);
- every model above published to one repository and served by a real
  `headrace serve` process; each verified through gRPC with the key's trigger
  inputs (p-value of the matches under chance); the white-box signature read
  from the published ONNX files.

Prints a table and, last, one JSON line with `wm_pvalue`, `clean_min_pvalue`,
`after_finetune_pvalue`, `after_prune_pvalue`, `acc_drop`, `whitebox_ber`
and `goals`. The defaults took about 6 minutes on the shared 2-core machine
(docs/watermark.md); `--quick` takes seconds.

    python -m benchmarks.watermark [--dataset mnist|digits] [--mnist-dir DIR]
        [--epochs 8] [--unmarked 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from benchmarks.procs import Processes
from security.watermark.config import WatermarkConfig
from security.watermark.embed import finetune_config, finetune_published
from security.watermark.key import generate_key, load_key, save_key
from security.watermark.oracles import GrpcOracle
from security.watermark.verify import check_signature, check_triggers
from security.watermark.weights import signature_weights
from serving.repository import ModelRepository, ModelVersion
from training.config import TrainConfig
from training.datasets import load_splits
from training.evaluate import evaluate
from training.export import export_onnx, verify_onnx
from training.preprocess.normalize import ChannelStats, to_model_input
from training.published import WEIGHTS_FILE, load_published_model, save_weights
from training.recipe import run_training

REPO_ROOT = Path(__file__).resolve().parents[1]
READY = r"serving grpc=(\S+)"
MARKED = "marked"
FINETUNED = "marked-finetuned"
PRUNED = "marked-pruned"
WHITEBOX_NOTE = "BER: white-box bit error rate read from each model.onnx"


@dataclass
class Row:
    """One model of the table."""

    name: str
    what: str
    test_accuracy: float
    matches: int | None = None
    trials: int | None = None
    p_value: float | None = None
    ber: float | None = None


@dataclass
class Options:
    dataset: str
    data_dir: Path | None
    epochs: int
    unmarked: int
    finetune_epochs: int
    prune_amount: float
    test_fraction: float
    triggers: int
    bits: int


def train(opts: Options, root: Path, name: str, seed: int, key_file: Path | None) -> float:
    """Train and publish one model; its test accuracy."""
    config = TrainConfig(
        model="lenet5",
        dataset=opts.dataset,
        data_dir=opts.data_dir,
        epochs=opts.epochs,
        seed=seed,
        patience=0,
        test_fraction=opts.test_fraction,
        name=name,
        repository=root / "repository",
        runs_dir=root / "runs",
        run_id=name,
        progress=False,
        watermark=None if key_file is None else WatermarkConfig(key_file=key_file),
    )
    started = time.perf_counter()
    report = run_training(config)
    print(
        f"  trained {name}: test accuracy {report.test_accuracy:.4f} "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return report.test_accuracy


def finetune_clean(
    opts: Options, root: Path, source: ModelVersion, name: str, epochs: int, lr: float
) -> float:
    """Fine-tune the marked model on clean data (no triggers) and publish it; test accuracy."""
    config = finetune_config(
        source,
        epochs=epochs,
        learning_rate=lr,
        data_dir=opts.data_dir,
        test_fraction=opts.test_fraction,
        name=name,
        runs_dir=root / "runs",
        run_id=name,
        progress=False,
    )
    return finetune_published(source, config).test_accuracy


def prune_global(model: nn.Module, amount: float) -> nn.Module:
    """Zero the `amount` smallest-magnitude conv and linear weights, over all layers at once."""
    targets = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return model


def publish_pruned(
    opts: Options, root: Path, source: ModelVersion, name: str, amount: float
) -> float:
    """Prune the marked model, publish it (config and preprocessing kept); test accuracy."""
    model = prune_global(load_published_model(source), amount).eval()
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight"))
    spec = source.config.preprocessing
    assert spec is not None
    stats = ChannelStats(tuple(spec.mean), tuple(spec.std))
    splits = load_splits(opts.dataset, opts.data_dir, 0, 0.1, opts.test_fraction)
    metrics = evaluate(model, splits.test, lambda px: to_model_input(px, stats), splits.num_classes)
    shape = tuple(source.config.inputs[0].dims)
    scratch = root / f"export-{name}"
    scratch.mkdir(exist_ok=True)
    onnx_path = export_onnx(model, shape, scratch / "model.onnx")
    verify_onnx(model, onnx_path, shape)
    weights = save_weights(model, scratch / WEIGHTS_FILE)
    ModelRepository(root / "repository").publish(
        source.config.model_copy(update={"name": name}),
        onnx_path,
        architecture=source.metadata.architecture,
        extra_files={WEIGHTS_FILE: weights},
        metrics={"test_accuracy": metrics.accuracy, "zero_weights": float(zeros)},
        lineage={"pruned_from": f"{source.name}:{source.version}", "amount": amount},
    )
    return metrics.accuracy


def verify_served(address: str, key_file: Path, names: list[str]) -> dict[str, Any]:
    """Black-box results of every model through the gRPC server."""
    key = load_key(key_file)
    results = {}
    for name in names:
        oracle = GrpcOracle(address, name)
        try:
            results[name] = check_triggers(key, oracle)
        finally:
            oracle.close()
    return results


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    parser.add_argument("--mnist-dir", type=Path, default=REPO_ROOT.parent / "shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of every model")
    parser.add_argument("--unmarked", type=int, default=5, help="unmarked models (seeds 0..)")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--prune", type=float, default=0.3, help="share of weights pruned")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--triggers", type=int, default=100)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument(
        "--stress",
        action="store_true",
        help="also: 5 clean epochs, 1 clean epoch at 10x the learning rate, 50%%/70%%/90%% pruning",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: digits, 1 epoch, 2 unmarked models"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.epochs, args.unmarked = "digits", 1, 2
    opts = Options(
        dataset=args.dataset,
        data_dir=args.mnist_dir if args.dataset == "mnist" else None,
        epochs=args.epochs,
        unmarked=args.unmarked,
        finetune_epochs=args.finetune_epochs,
        prune_amount=args.prune,
        test_fraction=args.test_fraction,
        triggers=args.triggers,
        bits=args.bits,
    )
    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally` stops the server
    scratch = tempfile.TemporaryDirectory(prefix="headrace-bench-watermark-")
    root = Path(scratch.name)
    key_file = save_key(generate_key(opts.triggers, opts.bits), root / "owner" / "key.json")
    key = load_key(key_file)
    print(f"{opts.dataset}: training 1 marked and {opts.unmarked} unmarked LeNet-5 ...", flush=True)
    started = time.perf_counter()
    accuracy = {MARKED: train(opts, root, MARKED, 0, key_file)}
    unmarked = [f"unmarked-seed{seed}" for seed in range(opts.unmarked)]
    for seed, name in enumerate(unmarked):
        accuracy[name] = train(opts, root, name, seed, None)
    repo = ModelRepository(root / "repository")
    lr = TrainConfig.model_fields["learning_rate"].default
    finetunes = [(FINETUNED, opts.finetune_epochs, lr)]
    prunes = [(PRUNED, opts.prune_amount)]
    if args.stress:
        finetunes += [("stress-finetune-5ep", 5, lr), ("stress-finetune-lr10x", 1, 10 * lr)]
        prunes += [(f"stress-prune-{round(100 * a)}", a) for a in (0.5, 0.7, 0.9)]
    whats = {MARKED: "marked (seed 0)"}
    for name, epochs, rate in finetunes:
        accuracy[name] = finetune_clean(opts, root, repo.get(MARKED), name, epochs, rate)
        whats[name] = f"+ {epochs} clean epoch(s), lr {rate:g}"
    for name, amount in prunes:
        accuracy[name] = publish_pruned(opts, root, repo.get(MARKED), name, amount)
        whats[name] = f"{amount:.0%} of weights pruned"
    attacked = [name for name, *_ in finetunes] + [name for name, _ in prunes]
    train_s = time.perf_counter() - started

    procs = Processes(root)
    try:
        argv = [sys.executable, "-m", "headrace", "serve", "--repository",
                str(root / "repository"), "--port", "0", "--metrics-port", "0"]  # fmt: skip
        server = procs.start("server", argv, cpus=None)
        address = procs.wait_ready(server, READY, timeout_s=120).group(1)
        blackbox = verify_served(address, key_file, [MARKED, *unmarked, *attacked])
    finally:
        procs.stop_all()

    rows = []
    for name in [MARKED, *attacked, *unmarked]:
        weights, layer, source = signature_weights(key, repo.latest(name))
        white = check_signature(key, weights, layer, source)
        black = blackbox[name]
        row = Row(name, whats.get(name, "unmarked"), accuracy[name], black.matches,
                  black.trials, black.p_value, white.bit_error_rate)  # fmt: skip
        rows.append(row)
    print_table(rows, opts, train_s)
    result = summarize(blackbox, accuracy, rows, unmarked)
    if args.stress:
        result["stress_pvalues"] = {n: blackbox[n].p_value for n in attacked[1:] if n != PRUNED}
    print(json.dumps(result))
    scratch.cleanup()
    return result


def print_table(rows: list[Row], opts: Options, train_s: float) -> None:
    print()
    print(
        f"LeNet-5 on {opts.dataset} ({opts.epochs} epochs, test fraction {opts.test_fraction}); "
        f"{opts.triggers} triggers verified through gRPC; {opts.bits}-bit white-box signature; "
        f"training took {train_s:.0f} s"
    )
    print(f"{'model':<22} {'what':<30} {'test acc':>8} {'matches':>9} {'p-value':>10} {'BER':>6}")
    for r in rows:
        matches = f"{r.matches}/{r.trials}"
        ber = "-" if r.ber is None else f"{r.ber:.3f}"
        print(
            f"{r.name:<22} {r.what:<30} {r.test_accuracy:>8.4f} {matches:>9} "
            f"{r.p_value:>10.3g} {ber:>6}"
        )
    print(WHITEBOX_NOTE)
    print()


def summarize(
    blackbox: dict[str, Any], accuracy: dict[str, float], rows: list[Row], unmarked: list[str]
) -> dict[str, Any]:
    """The issue's keys and goals."""
    marked_row = next(r for r in rows if r.name == MARKED)
    baseline = unmarked[0]  # same seed and epochs as the marked model
    out: dict[str, Any] = {
        "wm_pvalue": blackbox[MARKED].p_value,
        "wm_log10_pvalue": blackbox[MARKED].log10_p_value,
        "clean_min_pvalue": min(blackbox[name].p_value for name in unmarked),
        "after_finetune_pvalue": blackbox[FINETUNED].p_value,
        "after_prune_pvalue": blackbox[PRUNED].p_value,
        "acc_drop": 100.0 * (accuracy[baseline] - accuracy[MARKED]),
        "whitebox_ber": marked_row.ber,
        "marked_accuracy": accuracy[MARKED],
        "baseline_accuracy": accuracy[baseline],
    }
    out["goals"] = {
        "wm_pvalue_below_1e-6": out["wm_pvalue"] < 1e-6,
        "every_unmarked_above_0.01": out["clean_min_pvalue"] > 0.01,
        "after_finetune_below_1e-3": out["after_finetune_pvalue"] < 1e-3,
        "after_prune_below_1e-3": out["after_prune_pvalue"] < 1e-3,
        "acc_drop_below_0.5_points": out["acc_drop"] < 0.5,
        "whitebox_ber_zero": out["whitebox_ber"] == 0,
    }
    return out


if __name__ == "__main__":
    main()
