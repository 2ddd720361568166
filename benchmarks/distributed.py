"""Benchmark: distributed training strategies and gradient compression, on loopback and a slow link.

Two workers train LeNet-5 (the real MNIST split by default, or the embedded
digits) for `--epochs` epochs:

- loopback: every strategy x compression on a local Ray (`fit_distributed`,
  Ray Train workers; `--no-ray` runs the allreduce rows with the standalone
  launcher instead): seconds per epoch (median), bytes communicated per epoch
  (counted by the engine, all workers), test accuracy of the best weights;
  plus the single-process `Trainer` baseline's test accuracy;
- limited link: the allreduce rows again (`--limited-epochs` epochs) with each
  worker in its own network namespace, joined by a veth pair shaped by `tbf`
  to `--rate` (benchmarks/netns.py), gloo talking over it; wire bytes are the
  veth counters. Ray's processes live in the host namespace, so the
  parameter-server and hybrid rows (and everything, when namespaces cannot be
  used: not root, no iproute2) get a documented simulation instead:
  loopback seconds per epoch + one worker's counted bytes per epoch / rate
  (all of a worker's traffic serialised on its link). The simulation is also
  shown beside the measured rows so it can be judged.

Prints a table and, last, one JSON line with `allreduce_bytes`, `topk_bytes`,
`powersgd_bytes`, `allreduce_acc`, `topk_acc`, `powersgd_acc`,
`limited_link_speedup` (uncompressed / best compressed allreduce epoch time
on the limited link), the rows, and `goals`. Each Ray row costs about 20 s
beyond its epochs (workers start per row): every row for one epoch on digits
(`--dataset digits --epochs 1 --limited-epochs 1`) took under 5 minutes on
the shared 2-core machine.

    python -m benchmarks.distributed [--dataset mnist|digits] [--mnist-dir DIR]
        [--epochs 5] [--limited-epochs 2] [--rate 10mbit] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.netns import limited_link, namespaces_unavailable, run_standalone_pair, tx_bytes
from streams.broker import free_port
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.datasets import load_splits
from training.evaluate import evaluate
from training.loop import Trainer
from training.models import build_model
from training.preprocess import BatchPipeline

COMPRESSIONS: dict[str, Any] = {
    "none": "none",
    "fp16": "fp16",
    "topk": {"kind": "topk", "ratio": 0.01, "error_feedback": True},
    "powersgd": {"kind": "powersgd", "rank": 2, "warmup_steps": 0},
}
STRATEGIES = ("allreduce", "parameter_server", "hybrid")
Row = dict[str, Any]


def _rate_bytes_per_s(rate: str) -> float:
    units = {"kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8}
    for suffix, scale in units.items():
        if rate.endswith(suffix):
            return float(rate.removesuffix(suffix)) * scale
    raise SystemExit(f"error: --rate {rate!r}: use a number with kbit, mbit or gbit")


class Bench:
    """Shared settings and data of one benchmark run."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        dataset, data_dir = "digits", None
        if args.dataset == "mnist":
            if (args.mnist_dir / "t10k-images-idx3-ubyte.gz").is_file():
                dataset, data_dir = "mnist", args.mnist_dir
            else:
                print(f"note: no MNIST files in {args.mnist_dir}; using digits", file=sys.stderr)
        self.base = TrainConfig(
            dataset=dataset,
            data_dir=data_dir,
            epochs=args.epochs,
            batch_size=64,
            learning_rate=3e-3,
            lr_schedule="cosine",
            patience=0,
            publish=False,
            progress=False,
            runs_dir=work,
        )
        self.splits = load_splits(dataset, data_dir, 0, 0.1, 0.1)
        self.pipeline = BatchPipeline(
            self.base.preprocess,
            dataset,
            self.splits.train.images,
            self.splits.train.labels,
            self.splits.num_classes,
            0,
        )

    def config(self, strategy: str, compression: str, epochs: int) -> TrainConfig:
        return TrainConfig.model_validate(
            {
                **self.base.model_dump(),
                "epochs": epochs,
                "distributed": {
                    "workers": 2,
                    "strategy": strategy,
                    "compression": COMPRESSIONS[compression],
                },
            }
        )

    def test_accuracy(self, state: dict[str, torch.Tensor]) -> float:
        channels, size, _ = self.splits.input_shape
        model = build_model("lenet5", self.splits.num_classes, channels, size)
        model.load_state_dict(state)
        test = self.splits.test
        return evaluate(model, test, self.pipeline.eval_batch, self.splits.num_classes).accuracy

    def single_process(self) -> float:
        torch.manual_seed(0)
        channels, size, _ = self.splits.input_shape
        model = build_model("lenet5", self.splits.num_classes, channels, size)
        Trainer(model, self.splits, self.pipeline, self.base, self.work / "single").fit()
        return self.test_accuracy(model.state_dict())


def _row(link: str, strategy: str, compression: str, state: dict[str, Any], acc: float) -> Row:
    seconds = [float(h["seconds"]) for h in state["history"]]
    per_epoch = [int(b) for b in state["bytes_per_epoch"]]
    return {
        "link": link,
        "strategy": strategy,
        "compression": compression,
        "epochs": len(seconds),
        "epoch_s": statistics.median(seconds),
        "bytes_per_epoch": int(statistics.mean(per_epoch)),
        "test_acc": acc,
    }


def loopback_ray(bench: Bench, strategy: str, compression: str) -> Row:
    import ray

    from training.distributed import fit_distributed

    if not ray.is_initialized():
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
        )
    config = bench.config(strategy, compression, bench.args.epochs)
    run_dir = bench.work / f"loop-{strategy}-{compression}"
    result = fit_distributed(config, run_dir)
    return _row(
        "loopback",
        strategy,
        compression,
        load_checkpoint(run_dir),
        bench.test_accuracy(result.best_state),
    )


def standalone(bench: Bench, compression: str, link: Any, epochs: int) -> Row:
    """An allreduce run of the standalone launcher: in the namespaces (`link`) or on loopback."""
    name = f"{'limited' if link else 'loop'}-allreduce-{compression}"
    run_dir = bench.work / name
    run_dir.mkdir(parents=True)
    spec = bench.work / f"{name}.json"
    from training.distributed.worker import WorkerSpec

    spec.write_text(
        WorkerSpec(
            config=bench.config("allreduce", compression, epochs), run_dir=run_dir
        ).model_dump_json()
    )
    wire_before = tx_bytes(link) if link else 0
    run_standalone_pair(
        spec, link, timeout_s=bench.args.timeout_s, log_dir=run_dir, port=free_port()
    )
    state = load_checkpoint(run_dir)
    row = _row(
        f"limited {link.rate}" if link else "loopback",
        "allreduce",
        compression,
        state,
        bench.test_accuracy(state["best_state"]),
    )
    if link:
        row["wire_bytes_per_epoch"] = (tx_bytes(link) - wire_before) // max(row["epochs"], 1)
    return row


def simulate(row: Row, rate_bytes_per_s: float) -> float:
    """Limited-link seconds per epoch, a lower bound: loopback time + one worker's bytes / rate."""
    return float(row["epoch_s"] + row["bytes_per_epoch"] / 2 / rate_bytes_per_s)


def loopback_rows(bench: Bench, rate: float) -> list[Row]:
    """Every strategy x compression on loopback (Ray, or the standalone launcher)."""
    rows: list[Row] = []
    for strategy in bench.args.strategies:
        for compression in bench.args.compressions:
            if strategy != "allreduce" and compression == "powersgd":
                refused = "powersgd compresses allreduce buckets only"
                rows.append({"link": "loopback", "strategy": strategy,
                             "compression": compression, "refused": refused})  # fmt: skip
                continue
            if bench.args.no_ray and strategy != "allreduce":
                continue
            tic = time.perf_counter()
            if bench.args.no_ray:
                row = standalone(bench, compression, None, bench.args.epochs)
            else:
                row = loopback_ray(bench, strategy, compression)
            row["wall_s"] = time.perf_counter() - tic
            row["simulated_limited_epoch_s"] = simulate(row, rate)
            rows.append(row)
            print(f"  loopback {strategy} {compression}: {row['wall_s']:.0f} s", file=sys.stderr)
    return rows


def limited_rows(bench: Bench, loop: dict[str, Row], rate: float) -> list[Row]:
    """The allreduce rows again, each worker in its own namespace behind the shaped link."""
    rows = []
    with limited_link(bench.args.rate) as link:
        for compression in bench.args.compressions:
            row = standalone(bench, compression, link, bench.args.limited_epochs)
            row["simulated_limited_epoch_s"] = simulate(loop[compression], rate)
            rows.append(row)
            print(f"  limited allreduce {compression}: done", file=sys.stderr)
    return rows


def summarise(rows: list[Row], limited: list[Row]) -> dict[str, Any]:
    """The headline keys and goals from the rows."""
    loop = {r["compression"]: r for r in rows if r["strategy"] == "allreduce"}
    if limited:
        times = {row["compression"]: row["epoch_s"] for row in limited}
    else:
        times = {name: row["simulated_limited_epoch_s"] for name, row in loop.items()}
    compressed = [seconds for name, seconds in times.items() if name != "none"]
    speedup = times["none"] / min(compressed) if compressed else None
    base_bytes, base_acc = loop["none"]["bytes_per_epoch"], loop["none"]["test_acc"]
    meets = [
        name
        for name in ("topk", "powersgd")
        if name in loop
        and base_bytes >= 10 * loop[name]["bytes_per_epoch"]
        and loop[name]["test_acc"] >= base_acc - 0.01
    ]
    return {
        "allreduce_bytes": base_bytes,
        "topk_bytes": loop.get("topk", {}).get("bytes_per_epoch"),
        "powersgd_bytes": loop.get("powersgd", {}).get("bytes_per_epoch"),
        "allreduce_acc": base_acc,
        "topk_acc": loop.get("topk", {}).get("test_acc"),
        "powersgd_acc": loop.get("powersgd", {}).get("test_acc"),
        "limited_link_speedup": speedup,
        "goals": {
            "ge_10x_fewer_bytes_le_1pt_loss": bool(meets),
            "limited_link_ge_1_4x": speedup is not None and speedup >= 1.4,
        },
        "goal_met_by": meets,
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bench = Bench(args, work)
    rate = _rate_bytes_per_s(args.rate)
    load_before = os.getloadavg()[0]
    rows = loopback_rows(bench, rate)
    single = bench.single_process()
    why_not = "--skip-limited" if args.skip_limited else namespaces_unavailable()
    loop = {r["compression"]: r for r in rows if r["strategy"] == "allreduce"}
    limited = limited_rows(bench, loop, rate) if why_not is None else []
    return {
        "dataset": bench.base.dataset,
        "epochs": args.epochs,
        "limited_epochs": args.limited_epochs,
        "workers": 2,
        "limited_link": {
            "mode": "netns" if limited else "simulated",
            "rate": args.rate,
            "why_simulated": why_not,
        },
        "single_process_acc": single,
        **summarise(rows, limited),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "rows": rows + limited,
    }


def print_table(result: dict[str, Any]) -> None:
    link = result["limited_link"]
    print(
        f"{result['dataset']}, 2 workers, {result['epochs']} epochs; limited link "
        f"{link['rate']} ({link['mode']}), {result['limited_epochs']} epochs; "
        f"load average {result['load_avg_1m']}"
    )
    print(f"single-process test accuracy {result['single_process_acc']:.4f}")
    print(
        f"{'link':15s} {'strategy':16s} {'compression':11s} {'s/epoch':>8s} {'sim s/ep':>8s} "
        f"{'bytes/epoch':>12s} {'wire/epoch':>12s} {'test acc':>8s}"
    )
    for row in result["rows"]:
        head = f"{row['link']:15s} {row['strategy']:16s} {row['compression']:11s}"
        if "refused" in row:
            print(f"{head} refused: {row['refused']}")
            continue
        wire = row.get("wire_bytes_per_epoch")
        print(
            f"{head} {row['epoch_s']:8.2f} {row['simulated_limited_epoch_s']:8.2f} "
            f"{row['bytes_per_epoch']:12d} {wire if wire is not None else '-':>12} "
            f"{row['test_acc']:8.4f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    parser.add_argument("--mnist-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limited-epochs", type=int, default=2)
    parser.add_argument("--rate", default="10mbit", help="tbf rate of the limited link.")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument(
        "--compressions", nargs="+", choices=list(COMPRESSIONS), default=list(COMPRESSIONS)
    )
    parser.add_argument("--no-ray", action="store_true", help="Allreduce rows only, no Ray.")
    parser.add_argument("--skip-limited", action="store_true", help="Simulate the limited link.")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="Per standalone run.")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke-test size: digits, 1 epoch, allreduce rows without Ray, no fp16.",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.epochs, args.limited_epochs = "digits", 1, 1
        args.no_ray, args.strategies = True, ["allreduce"]
        args.compressions = [c for c in args.compressions if c != "fp16"]
    if "allreduce" not in args.strategies or "none" not in args.compressions:
        parser.error("the summary compares against allreduce with compression none: keep both")
    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up in finally blocks
    with tempfile.TemporaryDirectory(prefix="headrace-bench-dist-") as tmp:
        result = run(args, Path(tmp))
    print_table(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
