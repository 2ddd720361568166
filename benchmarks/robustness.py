"""Benchmark: PGD adversarial training against an undefended model, on MNIST, one CPU core.

Both models have the same architecture (`lenet5-wide` by default: LeNet's layout
with 16/32 channels, ReLU and max pooling) and are trained by the product's own
path: `run_training` with `TrainConfig.adversarial` for the defended one, then
published, loaded back with `published_pixel_model` (sha256-checked, weights_only)
and attacked on the MNIST test split (the seeded split of the 10,000 images
in --mnist-dir: 8,100 train / 900 val / 1,000 test).

Evaluation is the issue's: L-inf PGD at epsilon 0.3 on pixels in [0, 1], 40
steps of 0.01 from a random start, each sample's best iterate kept. The
defended model also faces a second PGD-40 with Madry's 2.5 * eps / 40 step; a
sample counts as robust only if it survives both (so the figure reported is
never weaker than the issue's attack alone).

    python -m benchmarks.robustness [--mnist-dir ../shared/data/mnist] [--epochs 15]

With the defaults it took about 16 minutes on one shared core (docs/security.md).
`--warmup-epochs` (3) may not exceed `--epochs` (the product refuses an epsilon ramp
longer than the run; both runs' settings are checked before anything trains). A
smoke run: `--epochs 1 --undefended-epochs 1 --warmup-epochs 1 --train-steps 2
--train-step-size 0.2 --eval-steps 3 --limit 100` (about half a minute).

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from security.adversarial import AdversarialConfig, correct_under_attack
from security.adversarial.config import default_step_size
from serving.repository import ModelRepository
from training.adversarial import published_pixel_model
from training.config import TrainConfig
from training.datasets import load_splits
from training.preprocess import AugmentConfig, PreprocessConfig
from training.recipe import TrainReport, run_training

GOAL_ROBUST = 0.75


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist-dir", type=Path, default=Path("../shared/data/mnist"))
    p.add_argument(
        "--dataset", default="mnist", help="mnist (the benchmark) or digits (smoke tests)."
    )
    p.add_argument("--model", default="lenet5-wide", help="Architecture of both models.")
    p.add_argument("--epochs", type=int, default=15, help="Epochs of PGD training.")
    p.add_argument("--undefended-epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam, cosine schedule, both models.")
    p.add_argument("--epsilon", type=float, default=0.3, help="Attack radius, [0, 1] pixels.")
    p.add_argument("--train-steps", type=int, default=7, help="PGD steps while training.")
    p.add_argument("--train-step-size", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=int, default=3, help="Epsilon ramp while training.")
    p.add_argument(
        "--augment",
        action="store_true",
        help="Random shifts and rotations while training (off: PGD training learned faster "
        "without them in our runs).",
    )
    p.add_argument("--eval-steps", type=int, default=40)
    p.add_argument("--eval-step-size", type=float, default=0.01)
    p.add_argument("--limit", type=int, default=None, help="Attack only the first N test images.")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def train_config(args: argparse.Namespace, root: Path, name: str, defended: bool) -> TrainConfig:
    adversarial = None
    if defended:
        adversarial = AdversarialConfig(
            epsilon=args.epsilon,
            steps=args.train_steps,
            step_size=args.train_step_size,
            warmup_epochs=args.warmup_epochs,
        )
    return TrainConfig(
        model=args.model,
        dataset=args.dataset,
        data_dir=args.mnist_dir if args.dataset == "mnist" else None,
        epochs=args.epochs if defended else args.undefended_epochs,
        learning_rate=args.lr,
        lr_schedule="cosine",
        patience=0,
        seed=args.seed,
        preprocess=PreprocessConfig(augment=AugmentConfig(enabled=args.augment)),
        adversarial=adversarial,
        name=name,
        repository=root / "repo",
        runs_dir=root / "runs",
        run_id="bench",
        progress=True,  # one line per epoch on stderr
    )


# The product's messages name `headrace train`'s flags; this script's flags for the same settings.
BENCH_FLAGS = {
    "--adv-warmup-epochs": "--warmup-epochs",
    "--adv-step-size": "--train-step-size",
    "--adv-steps": "--train-steps",
    "--adv-epsilon": "--epsilon",
}


def train_configs(args: argparse.Namespace, root: Path) -> tuple[TrainConfig, TrainConfig]:
    """Both runs' configs, built before either trains: a setting the defended run refuses
    (e.g. `--warmup-epochs` longer than `--epochs`) stops the benchmark at once, with the
    product's reason, instead of after the undefended model was trained and attacked."""
    try:
        return (
            train_config(args, root, "undefended", defended=False),
            train_config(args, root, "defended", defended=True),
        )
    except ValidationError as exc:
        reasons = [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
        message = "; ".join(reasons)
        for product_flag, bench_flag in BENCH_FLAGS.items():
            message = message.replace(product_flag, bench_flag)
        raise SystemExit(f"error: {message}") from None


def train(config: TrainConfig) -> TrainReport:
    torch.manual_seed(config.seed)
    return run_training(config)


def evaluate(args: argparse.Namespace, root: Path, name: str, defended: bool) -> dict[str, Any]:
    """Clean and robust accuracy of the published model `name` on the test split."""
    model = published_pixel_model(ModelRepository(root / "repo").get(name))
    data_dir = args.mnist_dir if args.dataset == "mnist" else None
    test = load_splits(args.dataset, data_dir, args.seed).test
    count = min(len(test), args.limit or len(test))
    images, labels = test.images[:count], test.labels[:count]
    started = time.perf_counter()
    eps, steps = args.epsilon, args.eval_steps
    clean = correct_under_attack(model, images, labels, "clean")
    pgd_issue = correct_under_attack(
        model, images, labels, "pgd", eps, steps=steps, step_size=args.eval_step_size
    )
    out: dict[str, Any] = {
        "samples": count,
        "clean_acc": float(clean.mean()),
        "pgd_acc_issue_step": float(pgd_issue.mean()),
    }
    robust = pgd_issue
    if defended:
        madry_step = default_step_size(eps, steps)
        pgd_madry = correct_under_attack(
            model, images, labels, "pgd", eps, steps=steps, step_size=madry_step, seed=1
        )
        out["pgd_acc_madry_step"] = float(pgd_madry.mean())
        out["fgsm_acc"] = float(correct_under_attack(model, images, labels, "fgsm", eps).mean())
        robust = pgd_issue & pgd_madry
    out["robust_acc"] = float(robust.mean())
    out["eval_seconds"] = time.perf_counter() - started
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    np.random.seed(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="headrace-robustness-") as tmp:
        root = Path(tmp)
        plain_config, robust_config = train_configs(args, root)
        plain = train(plain_config)
        plain_eval = evaluate(args, root, "undefended", defended=False)
        robust = train(robust_config)
        robust_eval = evaluate(args, root, "defended", defended=True)
    total = time.perf_counter() - started

    eps, steps = args.epsilon, args.eval_steps
    print(
        f"{args.model} on {args.dataset}: PGD L-inf eps={eps:g}, {steps} steps of "
        f"{args.eval_step_size:g} (random start, best iterate); test samples "
        f"{plain_eval['samples']}"
    )
    header = f"{'model':<12} {'epochs':>6} {'train s':>8} {'clean':>7} {'fgsm':>7} {'pgd':>7}"
    print(header)
    for label, report, ev in (
        ("undefended", plain, plain_eval),
        ("pgd-trained", robust, robust_eval),
    ):
        fgsm = ev.get("fgsm_acc")
        print(
            f"{label:<12} {report.epochs_run:>6} {report.train_seconds:>8.0f} "
            f"{ev['clean_acc']:>7.4f} {'-' if fgsm is None else f'{fgsm:.4f}':>7} "
            f"{ev['robust_acc']:>7.4f}"
        )
    print(
        f"defended: PGD step {args.eval_step_size:g} -> {robust_eval['pgd_acc_issue_step']:.4f}, "
        f"step {default_step_size(eps, steps):.5f} -> {robust_eval['pgd_acc_madry_step']:.4f}, "
        f"both -> {robust_eval['robust_acc']:.4f}; total {total:.0f} s"
    )
    result: dict[str, Any] = {
        "model": args.model,
        "dataset": args.dataset,
        "epsilon": eps,
        "eval_pgd_steps": steps,
        "eval_pgd_step_size": args.eval_step_size,
        "train_pgd_steps": args.train_steps,
        "train_pgd_step_size": args.train_step_size,
        "train_epochs": robust.epochs_run,
        "warmup_epochs": args.warmup_epochs,
        "augment": args.augment,
        "learning_rate": args.lr,
        "test_samples": plain_eval["samples"],
        "clean_acc": robust_eval["clean_acc"],
        "undefended_clean_acc": plain_eval["clean_acc"],
        "undefended_robust_acc": plain_eval["robust_acc"],
        "defended_robust_acc": robust_eval["robust_acc"],
        "defended_robust_acc_issue_step": robust_eval["pgd_acc_issue_step"],
        "defended_robust_acc_madry_step": robust_eval["pgd_acc_madry_step"],
        "defended_fgsm_acc": robust_eval["fgsm_acc"],
        "undefended_train_seconds": plain.train_seconds,
        "defended_train_seconds": robust.train_seconds,
        "eval_seconds": plain_eval["eval_seconds"] + robust_eval["eval_seconds"],
        "total_seconds": total,
        "goals": {"defended_robust_ge_75pct": robust_eval["robust_acc"] >= GOAL_ROBUST},
    }
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
