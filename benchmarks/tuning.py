"""Benchmark: NNI's TPE against random search, and what the Medianstop assessor saves.

Every search tunes LeNet-5 on the embedded digits dataset (or the MNIST folder
with --dataset mnist) over DEFAULT_SEARCH_SPACE, unchanged: the space a
`headrace tune` user gets (learning rate log-uniform over five decades, batch
size, width, dropout, weight decay, optimizer). The objective is the trial's
best validation loss (cross-entropy on the validation split), minimised.

Three searches run per seed, each with the same budget: the same number of
trials, the same epochs per trial, the same seed for the tuner and for training
(which also fixes the data split):

    random        NNI's RandomTuner
    tpe           NNI's TpeTuner (its first --tpe-startup trials are random; by default
                  as many as `headrace tune` gives it: tpe_startup_jobs(trials))
    tpe+assessor  the same TPE search with Medianstop as `headrace tune` runs it:
                  training.tuning.medianstop.HeadraceMedianstop, NNI's
                  MedianstopAssessor (minimize, start_step MEDIANSTOP_START_STEP)
                  that stops no trial before MEDIANSTOP_MIN_COMPLETED trials
                  have finished (--assessor-min-completed 1: NNI's own rule)

The searches are driven in-process by NNI's own tuner and assessor classes,
called the way NNI's dispatcher calls them (benchmarks/tuning_search.py); these
are exactly the algorithms `headrace tune` uses, but with no NNI manager and no
per-trial process start-up, so wall time measures the search itself.

The three searches of a seed take turns, a trial each (`run_searches`): trial
k of each runs at about the same time, so a change in the machine's speed
over the run falls on all three alike instead of on whichever search ran in
that stretch. A search's seconds add up its own trials and its tuner's and
assessor's work; the turns change no result (each search has its own tuner
and seeded training). One untimed warm-up trial runs first (imports, caches),
so the first search timed is not charged for them. Each search's CPU time
(this process) is reported beside its wall time.

Early-stopped trials (--early-stopped): with `last`, the default, the tuner
gets a trial the assessor stopped with its last per-epoch validation loss as
its final result. That is what `headrace tune` does: its experiment config
sets NNI's deprecated includeIntermediateResults, so NNI's dispatcher does the
same (`_earlystop_notify_tuner`). With `ignore` the tuner learns nothing of a
stopped trial (NNI 3.0's default: a killed trial reports no final result) and
TPE stays in its random start-up while most trials are stopped.

Reported (means over the seeds):
    tpe_best_val_loss, random_best_val_loss: the lowest best validation loss
        among the trials of a search that ran to their end (a stopped trial
        leaves no model: `headrace tune` archives only finished trials);
    assessor_time_saved_pct = 100 * (1 - sum of tpe+assessor seconds
        / sum of tpe seconds), over the same seeds;
    assessor_best_val_loss_delta = mean over seeds of (best with the assessor
        - best without it); <= 0 means the assessor made the result no worse.
Goals: tpe <= 0.8 x random; the assessor saves >= 40% with a delta <= 0.

The CurvefittingAssessor is not offered: it extrapolates rising accuracy curves
and, by its own documentation, does not support minimising a loss.

    python -m benchmarks.tuning [--trials 30] [--epochs EPOCHS] [--seeds 0 1 2]
        [--tpe-startup N] [--assessor medianstop|none] [--assessor-start-step S]
        [--assessor-min-completed N]
        [--early-stopped last|ignore] [--trials-out trials.json]
        [--dataset digits|mnist] [--mnist-dir ../shared/data/mnist] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from nni.algorithms.hpo.tpe_tuner import TpeArguments

from benchmarks.tuning_search import (
    Search,
    SearchResult,
    SearchSettings,
    TunerName,
    run_searches,
)
from training.config import TrainConfig
from training.tuning.objective import run_trial
from training.tuning.search_space import DEFAULT_SEARCH_SPACE
from training.tuning.tuners import (
    MEDIANSTOP_MIN_COMPLETED,
    MEDIANSTOP_START_STEP,
    tpe_startup_jobs,
)

GOAL_TPE_RATIO = 0.8  # TPE's best validation loss at most this fraction of Random's
GOAL_TIME_SAVED_PCT = 40.0  # the assessor saves at least this share of search time
DEFAULTS: dict[str, Any] = {
    "trials": 30,
    "epochs": 8,  # at 5 the best loss is near what random search finds; 12 does not fit ~20 min
    "seeds": [0, 1, 2],
    "assessor_start_step": MEDIANSTOP_START_STEP,
    "assessor_min_completed": MEDIANSTOP_MIN_COMPLETED,
}  # tpe_startup: tpe_startup_jobs(trials), as `headrace tune`
QUICK: dict[str, Any] = {
    "trials": 3,
    "epochs": 1,
    "seeds": [0],
    "assessor_start_step": 1,
    "assessor_min_completed": MEDIANSTOP_MIN_COMPLETED,
}
SEARCHES: list[tuple[str, TunerName, bool]] = [
    ("random", "random", False),
    ("tpe", "tpe", False),
    ("tpe+assessor", "tpe", True),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, help=f"Trials per search ({DEFAULTS['trials']}).")
    parser.add_argument("--epochs", type=int, help=f"Epochs per trial ({DEFAULTS['epochs']}).")
    parser.add_argument("--seeds", type=int, nargs="+", help="Seeds of tuner and training.")
    parser.add_argument(
        "--tpe-startup",
        type=int,
        help="TPE's random start-up trials, n_startup_jobs (as `headrace tune`: a third of "
        "the trials, 2 to 20).",
    )
    parser.add_argument("--assessor", choices=["medianstop", "none"], default="medianstop")
    parser.add_argument(
        "--assessor-start-step",
        type=int,
        help="Medianstop's start_step: epochs a trial reports before it may be stopped "
        f"({DEFAULTS['assessor_start_step']}).",
    )
    parser.add_argument(
        "--assessor-min-completed",
        type=int,
        help="Trials that must finish before Medianstop stops any; 1 is NNI's own rule "
        f"({DEFAULTS['assessor_min_completed']}, as `headrace tune`).",
    )
    parser.add_argument(
        "--early-stopped",
        choices=["ignore", "last"],
        default="last",
        help="What TPE learns of a trial the assessor stopped: its last intermediate result "
        "(last: `headrace tune`, via NNI's deprecated includeIntermediateResults), or nothing "
        "(ignore: NNI 3.0's default).",
    )
    parser.add_argument(
        "--searches",
        nargs="+",
        choices=[name for name, _, _ in SEARCHES],
        default=[name for name, _, _ in SEARCHES],
        help="Run only these searches (the goals need all three).",
    )
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    parser.add_argument("--mnist-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--quick", action="store_true", help="A tiny run for the smoke test.")
    parser.add_argument("--trials-out", type=Path, help="Also write every trial to this JSON file.")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.tpe_startup is None:
        args.tpe_startup = tpe_startup_jobs(args.trials)
    if args.trials < 1 or args.epochs < 1 or args.tpe_startup < 0 or args.assessor_start_step < 0:
        parser.error("--trials and --epochs must be >= 1, --tpe-startup and start step >= 0")
    if args.assessor_min_completed < 1:
        parser.error("--assessor-min-completed must be >= 1")
    if args.dataset == "mnist" and not args.mnist_dir.is_dir():
        parser.error(f"--mnist-dir {args.mnist_dir} is not a folder: pass the MNIST IDX folder")
    return args


def finite(value: float) -> float | None:
    """JSON has no infinity: a search without any finished trial has no best loss."""
    return round(value, 5) if math.isfinite(value) else None


def mean_or_none(values: list[float]) -> float | None:
    return mean(values) if values and all(math.isfinite(v) for v in values) else None


def mean_seconds(results: list[SearchResult]) -> float | None:
    return round(mean(r.seconds for r in results), 1) if results else None


def print_table(runs: list[tuple[str, SearchResult]]) -> None:
    header = (
        f"{'search':<13} {'seed':>4} {'best val loss':>13} {'median':>7} {'trials':>6} "
        f"{'stopped':>7} {'failed':>6} {'epochs':>6} {'seconds':>8} {'cpu s':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, result in runs:
        best, median = result.best_val_loss, result.median_val_loss
        print(
            f"{name:<13} {result.settings.seed:>4} {best:>13.5f} {median:>7.3f} "
            f"{len(result.trials):>6} {result.count('early_stopped'):>7} "
            f"{result.count('failed'):>6} {result.epochs_run:>6} {result.seconds:>8.1f} "
            f"{result.cpu_seconds:>7.1f}"
        )
    print(
        "best val loss: the lowest of the trials that ran to their end; median: their median. "
        "Trials run in-process (NNI's tuner and assessor classes, no NNI manager, no per-trial "
        "process start-up)."
    )


def write_trials(path: Path, runs: list[tuple[str, SearchResult]]) -> None:
    """Every trial of every search (parameters, status, best val loss, epochs, seconds)."""
    rows = [
        {"search": name, "seed": result.settings.seed, **asdict(trial)}
        for name, result in runs
        for trial in result.trials
    ]
    path.write_text(json.dumps(rows, indent=1))


def summarise(by_name: dict[str, list[SearchResult]], args: argparse.Namespace) -> dict[str, Any]:
    """The JSON object: headline keys, per-seed numbers, settings and goals."""
    tpe, random = by_name.get("tpe", []), by_name.get("random", [])
    assessed = by_name.get("tpe+assessor", []) if tpe else []
    tpe_best = mean_or_none([r.best_val_loss for r in tpe])
    random_best = mean_or_none([r.best_val_loss for r in random])
    ratio = tpe_best / random_best if tpe_best is not None and random_best else None
    saved_pct: float | None = None
    cpu_saved_pct: float | None = None
    delta: float | None = None
    epochs_saved_pct: float | None = None
    if assessed:
        saved_pct = 100.0 * (1.0 - sum(r.seconds for r in assessed) / sum(r.seconds for r in tpe))
        cpu_saved_pct = 100.0 * (
            1.0 - sum(r.cpu_seconds for r in assessed) / sum(r.cpu_seconds for r in tpe)
        )
        epochs_saved_pct = 100.0 * (
            1.0 - sum(r.epochs_run for r in assessed) / sum(r.epochs_run for r in tpe)
        )
        delta = mean_or_none(
            [a.best_val_loss - t.best_val_loss for a, t in zip(assessed, tpe, strict=True)]
        )
    per_seed: list[dict[str, Any]] = []
    for index, seed in enumerate(args.seeds):
        row: dict[str, Any] = {"seed": seed}
        for name, results in by_name.items():
            key = name.replace("+", "_")
            r = results[index]
            row[f"{key}_best_val_loss"] = finite(r.best_val_loss)
            row[f"{key}_median_trial_val_loss"] = finite(r.median_val_loss)
            row[f"{key}_seconds"] = round(r.seconds, 2)
            row[f"{key}_cpu_seconds"] = round(r.cpu_seconds, 2)
            row[f"{key}_epochs"] = r.epochs_run
            row[f"{key}_early_stopped"] = r.count("early_stopped")
            row[f"{key}_failed"] = r.count("failed")
            row[f"{key}_best_params"] = r.best_params
        per_seed.append(row)
    return {
        "tpe_best_val_loss": round(tpe_best, 5) if tpe_best is not None else None,
        "random_best_val_loss": round(random_best, 5) if random_best is not None else None,
        "assessor_time_saved_pct": round(saved_pct, 1) if saved_pct is not None else None,
        "assessor_best_val_loss_delta": round(delta, 5) if delta is not None else None,
        "tpe_over_random": round(ratio, 3) if ratio is not None else None,
        "assessor_epochs_saved_pct": (
            round(epochs_saved_pct, 1) if epochs_saved_pct is not None else None
        ),
        "assessor_cpu_saved_pct": round(cpu_saved_pct, 1) if cpu_saved_pct is not None else None,
        "tpe_seconds": mean_seconds(tpe),
        "random_seconds": mean_seconds(random),
        "tpe_assessor_seconds": mean_seconds(assessed),
        "per_seed": per_seed,
        "settings": {
            "model": "lenet5",
            "dataset": args.dataset,
            "trials": args.trials,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "seeding": "tuner seed = training seed = the search's seed",
            "tpe": {
                "optimize_mode": "minimize",
                **TpeArguments(n_startup_jobs=args.tpe_startup)._asdict(),
            },
            "assessor": (
                {
                    "name": "Medianstop",
                    "optimize_mode": "minimize",
                    "start_step": args.assessor_start_step,
                    "min_completed": args.assessor_min_completed,
                    "early_stopped_trials_to_tuner": args.early_stopped,
                }
                if args.assessor == "medianstop"
                else None
            ),
            "search_space": DEFAULT_SEARCH_SPACE,
            "in_process": True,
        },
        "goals": {
            "tpe_le_0.8x_random": ratio is not None and ratio <= GOAL_TPE_RATIO,
            "assessor_saves_40pct": saved_pct is not None and saved_pct >= GOAL_TIME_SAVED_PCT,
            "assessor_no_worse": delta is not None and delta <= 0.0,
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("nni").setLevel(logging.WARNING)  # keep the table free of "Using seed"
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    print(
        f"{args.trials} trials x {args.epochs} epochs, seeds {args.seeds}; TPE n_startup_jobs "
        f"{args.tpe_startup}; Medianstop start_step {args.assessor_start_step}, min_completed "
        f"{args.assessor_min_completed}; early-stopped "
        f"trials to the tuner: {args.early_stopped}",
        flush=True,
    )
    searches = [
        s for s in SEARCHES if s[0] in args.searches and (args.assessor != "none" or not s[2])
    ]
    by_name: dict[str, list[SearchResult]] = {name: [] for name, _, _ in searches}
    ordered: list[tuple[str, SearchResult]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        base = TrainConfig(
            model="lenet5",
            dataset=args.dataset,
            data_dir=args.mnist_dir if args.dataset == "mnist" else None,
            epochs=args.epochs,
            publish=False,
            progress=False,
            runs_dir=Path(tmp),
        )
        run_trial(base.model_copy(update={"epochs": 1}))  # warm-up, untimed: imports, caches
        for seed in args.seeds:
            turns = [
                Search(
                    SearchSettings(
                        tuner=tuner,
                        seed=seed,
                        trials=args.trials,
                        tpe_startup=args.tpe_startup,
                        assessor=assessor,
                        assessor_start_step=args.assessor_start_step,
                        early_stopped=args.early_stopped,
                        assessor_min_completed=args.assessor_min_completed,
                    ),
                    base,
                    DEFAULT_SEARCH_SPACE,
                )
                for _, tuner, assessor in searches
            ]
            for (name, _, _), result in zip(searches, run_searches(turns), strict=True):
                by_name[name].append(result)
                ordered.append((name, result))
                print(
                    f"{name} seed {seed}: best val loss {result.best_val_loss:.5f} "
                    f"in {result.seconds:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    print_table(ordered)
    if args.trials_out is not None:
        write_trials(args.trials_out, ordered)
    summary = summarise(by_name, args)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["load_average_1m"] = {
        "start": round(load_start, 2),
        "end": round(os.getloadavg()[0], 2),
    }
    print(
        f"TPE/Random best val loss: {summary['tpe_over_random']}; assessor saved "
        f"{summary['assessor_time_saved_pct']}% of TPE's search time "
        f"(best-loss delta {summary['assessor_best_val_loss_delta']})."
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
