"""Benchmark: TPE against what random search finds on average, not in one lucky or unlucky draw.

`benchmarks.tuning` compares one TPE search with one Random search per seed, so
its ratio moves with the luck of those few random draws. This benchmark draws
many more random configurations of the same seed (`--draws`, 200 by default)
and reports what a Random search of the budget (`--trials`) finds on average:
the expected best of `trials` configurations taken from the draws, computed
exactly over every choice of them. NNI's RandomTuner samples independently of
the results, so the first `--trials` draws are exactly the Random search
`benchmarks.tuning` runs for that seed; where its best ranks among all draws
shows how lucky it was.

Per seed, in one run:

    random (draws)  NNI's RandomTuner, --draws trials
    tpe             NNI's TpeTuner as `headrace tune` runs it (n_startup_jobs
                    tpe_startup_jobs(trials)), --trials trials

Everything else is as in `benchmarks.tuning` (LeNet-5, the default search space
a `headrace tune` user gets, the tuner's and the training's seed the same;
trials run in-process). It takes about (draws + trials) x 3 s per seed on the
build machine: some 35 minutes at the defaults.

Final JSON keys (means over the seeds):
    tpe_best_val_loss               TPE's best validation loss
    random_best_val_loss            the best of the first --trials draws (the Random
                                    search of benchmarks.tuning)
    random_expected_best_val_loss   expected best of --trials draws out of --draws
    random_best_of_draws            the best of all --draws draws
    tpe_over_random, tpe_over_expected_random

    python -m benchmarks.tuning_luck [--draws 200] [--trials 30] [--epochs 8] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from benchmarks.tuning import DEFAULTS, GOAL_TPE_RATIO
from benchmarks.tuning_search import (
    Search,
    SearchResult,
    SearchSettings,
    TunerName,
    run_searches,
)
from training.config import TrainConfig
from training.tuning.search_space import DEFAULT_SEARCH_SPACE
from training.tuning.tuners import tpe_startup_jobs


def losses(result: SearchResult, first: int | None = None) -> list[float]:
    """Each trial's best validation loss in trial order (`inf` for a failed trial)."""
    trials = result.trials if first is None else result.trials[:first]
    return [t.best_val_loss if t.best_val_loss is not None else math.inf for t in trials]


def expected_best_of(values: list[float], n: int) -> float:
    """Expected minimum of `n` values drawn without replacement from `values`.

    With the values sorted, the k-th smallest (k from 0) is the minimum of a draw
    when it is drawn and the other n - 1 come from the len - k - 1 above it.
    """
    if not 1 <= n <= len(values):
        raise ValueError(f"n must be 1 to {len(values)}, got {n}")
    ordered = sorted(values)
    total = math.comb(len(ordered), n)
    expected = 0.0
    for k, value in enumerate(ordered):
        ways = math.comb(len(ordered) - k - 1, n - 1)
        if ways == 0:
            break
        if math.isinf(value):
            return math.inf  # all n draws may fail
        expected += value * ways / total
    return expected


def rank_of(value: float, values: list[float]) -> int:
    """1 for the lowest: how many of `values` are below `value`, plus one."""
    return 1 + sum(1 for v in values if v < value)


def seed_row(seed: int, draws: SearchResult, tpe: SearchResult, trials: int) -> dict[str, Any]:
    drawn = losses(draws)
    random_best = min(losses(draws, trials))
    return {
        "seed": seed,
        "tpe_best_val_loss": round(tpe.best_val_loss, 5),
        "random_best_val_loss": round(random_best, 5),
        "random_best_rank": rank_of(random_best, drawn),
        "random_expected_best_val_loss": round(expected_best_of(drawn, trials), 5),
        "random_best_of_draws": round(min(drawn), 5),
        "tpe_rank_among_draws": rank_of(tpe.best_val_loss, drawn),
        "draws_failed": sum(1 for v in drawn if math.isinf(v)),
    }


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    def avg(key: str) -> float:
        return round(mean(row[key] for row in rows), 5)

    tpe, random, expected = (
        avg("tpe_best_val_loss"),
        avg("random_best_val_loss"),
        avg("random_expected_best_val_loss"),
    )
    return {
        "tpe_best_val_loss": tpe,
        "random_best_val_loss": random,
        "random_expected_best_val_loss": expected,
        "random_best_of_draws": avg("random_best_of_draws"),
        "tpe_over_random": round(tpe / random, 3),
        "tpe_over_expected_random": round(tpe / expected, 3),
        "goal_ratio": GOAL_TPE_RATIO,
        "per_seed": rows,
        "settings": {
            "model": "lenet5",
            "dataset": "digits",
            "trials": args.trials,
            "draws": args.draws,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "tpe_startup": tpe_startup_jobs(args.trials),
            "search_space": DEFAULT_SEARCH_SPACE,
        },
    }


def print_rows(rows: list[dict[str, Any]], draws: int) -> None:
    print(
        f"{'seed':>4} {'TPE':>8} {'Random':>8} {'its rank':>8} {'expected':>8} "
        f"{'best of ' + str(draws):>12} {'TPE rank':>8}"
    )
    for row in rows:
        print(
            f"{row['seed']:>4} {row['tpe_best_val_loss']:>8.4f} "
            f"{row['random_best_val_loss']:>8.4f} "
            f"{row['random_best_rank']:>8} {row['random_expected_best_val_loss']:>8.4f} "
            f"{row['random_best_of_draws']:>12.4f} {row['tpe_rank_among_draws']:>8}"
        )
    print(
        f"Random: its search's best, and that best's rank among the {draws} draws; expected: "
        "the mean best of a Random search of the budget; TPE rank: where TPE's best would rank "
        "among the draws."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=200, help="Random draws per seed (200).")
    parser.add_argument(
        "--trials",
        type=int,
        default=DEFAULTS["trials"],
        help=f"The search budget ({DEFAULTS['trials']}, as benchmarks.tuning).",
    )
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="Epochs per trial.")
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULTS["seeds"])
    args = parser.parse_args(argv)
    if args.trials < 1 or args.epochs < 1:
        parser.error("--trials and --epochs must be >= 1")
    if args.draws < args.trials:
        parser.error(f"--draws must be at least --trials ({args.trials})")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("nni").setLevel(logging.WARNING)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tuning-luck-") as tmp:
        base = TrainConfig(
            model="lenet5",
            dataset="digits",
            epochs=args.epochs,
            publish=False,
            progress=False,
            runs_dir=Path(tmp),
        )
        plan: list[tuple[TunerName, int]] = [("random", args.draws), ("tpe", args.trials)]
        for seed in args.seeds:
            settings = [
                SearchSettings(
                    tuner=tuner,
                    seed=seed,
                    trials=trials,
                    tpe_startup=tpe_startup_jobs(args.trials),
                    assessor=False,
                    assessor_start_step=0,
                )
                for tuner, trials in plan
            ]
            draws, tpe = run_searches([Search(s, base, DEFAULT_SEARCH_SPACE) for s in settings])
            rows.append(seed_row(seed, draws, tpe, args.trials))
            print(json.dumps(rows[-1]), flush=True)
    print_rows(rows, args.draws)
    summary = summarise(rows, args)
    print(
        f"TPE/Random: {summary['tpe_over_random']} against the Random search of these seeds, "
        f"{summary['tpe_over_expected_random']} against what Random finds on average "
        f"(goal of benchmarks.tuning: {GOAL_TPE_RATIO})."
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
