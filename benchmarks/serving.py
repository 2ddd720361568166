"""Benchmark: headrace's gRPC serving against Ray Serve and against its own ceilings.

One closed-loop async gRPC load generator (`benchmarks.loadgen`, 1/8/32/64
concurrent streams, fixed duration after a warm-up) measures, for LeNet-5
(transport-bound on CPU) and resnet20 (compute-bound), both with random
weights and one sample per request sent as raw_input_contents:

- headrace with dynamic batching and with batching off (`headrace serve`), both
  servers up at once and each point measured on both in A B B A order, in
  windows of half the duration (the table's note lists each window's rate);
- Ray Serve with `@serve.batch` (same max batch size and queue delay) over its
  own gRPC ingress, speaking the identical protocol (`benchmarks.rayserve_app`);
- the ceilings: ONNX Runtime alone at its best batch size with the server's
  thread settings (`benchmarks.ort_ceiling`), and a grpc.aio server answering
  ModelInfer with a canned response (`benchmarks.canned_server`);
- extra rows: clients sending batches of `--client-batch` samples per request,
  and clients keeping one ModelStreamInfer call open instead of a ModelInfer
  call per request (headrace batched and the canned server, at 32 and the top
  stream count; `--skip-stream-rpc` leaves them out).

Servers run on one core and the generator on another (when there are two).
Prints a table and a final JSON line. Batching counts as slower than no
batching at a point only when it is more than `SAME_PATH_NOISE` (5%, in
`benchmarks.serving_report`) slower:
two identical endpoints differ by that much and more (`batched_slower_than_unbatched_at`
lists every point where batched was below at all). `--aa-check` measures that
noise in the run: two identical batched servers, side by side like the pair
above (JSON `aa_first_over_second`, `aa_largest_gap`).

    python -m benchmarks.serving [--duration-s 5] [--streams 1 8 32 64]
        [--models lenet5 resnet20] [--skip-rayserve] [--aa-check] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.procs import Child, Processes
from benchmarks.serving_report import (
    AA_SYSTEMS,
    Row,
    Settings,
    cell,
    merge_windows,
    others_cpu_pct,
    print_table,
    summarize,
)
from streams.broker import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_SHAPES: dict[str, tuple[int, ...]] = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}
READY = r"serving grpc=(\S+)"


@dataclass(frozen=True)
class Load:
    """One run of the load generator: which server, which model, how it is called."""

    system: str
    target: str
    model: str
    streams: list[int]
    watch_pid: int
    rows: int = 1
    metadata: tuple[str, ...] = ()
    rpc: str = "unary"


def publish_models(root: Path, models: list[str], max_queue_delay_us: int) -> dict[str, Path]:
    """Random-weight models exported to ONNX and published; model name -> model.onnx."""
    import torch

    from serving.model_config import DynamicBatchingConfig, ModelConfig, TensorSpec
    from serving.repository import ModelRepository
    from training.export import INPUT_NAME, OUTPUT_NAME, export_onnx
    from training.models import build_model

    torch.manual_seed(0)
    repository = ModelRepository(root)
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="headrace-bench-export-") as tmp:
        for name in models:
            shape = MODEL_SHAPES[name]
            onnx_path = export_onnx(build_model(name), shape, Path(tmp) / f"{name}.onnx")
            config = ModelConfig(
                name=name,
                max_batch_size=64,
                inputs=[TensorSpec(name=INPUT_NAME, datatype="FP32", dims=list(shape))],
                outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", dims=[10])],
                dynamic_batching=DynamicBatchingConfig(max_queue_delay_us=max_queue_delay_us),
            )
            files[name] = repository.publish(config, onnx_path, architecture=name).model_file
    return files


def _python(*module_args: str) -> list[str]:
    return [sys.executable, "-m", *module_args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


class Bench:
    """Runs every measurement of one benchmark run."""

    def __init__(self, settings: Settings, procs: Processes) -> None:
        self.s = settings
        self.procs = procs
        self.rows: list[Row] = []

    def load(
        self,
        system: str,
        target: str,
        model: str,
        streams: list[int],
        watch_pid: int,
        rows: int = 1,
        metadata: tuple[str, ...] = (),
        note: str = "",
        rpc: str = "unary",
    ) -> None:
        """Run the generator (pinned to the client core) and add its rows to the table."""
        load = Load(system, target, model, streams, watch_pid, rows, metadata, rpc)
        for r in self._generate(load):
            kinds = ", ".join(f"{k}={v}" for k, v in r["error_kinds"].items())
            self._add(
                Row(
                    system,
                    model,
                    r["streams"],
                    r["qps"],
                    r["samples_per_s"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["errors"],
                    r["server_cpu_pct"],
                    r["client_cpu_pct"],
                    others_cpu_pct(r),
                    "; ".join(filter(None, [note, kinds])),
                )  # fmt: skip
            )

    def side_by_side(self, model: str, streams: int, servers: list[tuple[str, str, int]]) -> None:
        """One point on two servers (system, target, pid) in A B B A order, each window half
        the point's duration: drift over the point and the order of measuring fall on both
        alike. Each server's row merges its two windows (latency percentiles exactly)."""
        first, second = servers
        windows: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {first[0]: [], second[0]: []}
        with tempfile.TemporaryDirectory(prefix="headrace-bench-latencies-") as tmp:
            for i, (system, target, pid) in enumerate([first, second, second, first]):
                out = Path(tmp) / f"window{i}.npy"
                load = Load(system, target, model, [streams], pid)
                (r,) = self._generate(load, self.s.duration_s / 2, latencies_out=out)
                windows[system].append((r, np.load(out)))
        for system, measured in windows.items():
            self._add(merge_windows(system, model, measured))

    def _add(self, row: Row) -> None:
        self.rows.append(row)
        print(
            f"  {row.system:<30} {row.model:<9} {row.streams:>3} streams: {row.qps:>9.1f} req/s "
            f"p99 {cell(row.p99_ms, '.2f')} ms errors {row.errors}",
            flush=True,
        )

    def _generate(
        self, load: Load, duration_s: float | None = None, latencies_out: Path | None = None
    ) -> list[dict[str, Any]]:
        """Run the load generator once; its JSON result per stream count."""
        import subprocess

        s = self.s
        duration = s.duration_s if duration_s is None else duration_s
        argv = _python(
            "benchmarks.loadgen", "--target", load.target, "--model", load.model,
            "--shape", *map(str, MODEL_SHAPES[load.model]), "--rows", str(load.rows),
            "--streams", *map(str, load.streams), "--duration-s", str(duration),
            "--warmup-s", str(s.warmup_s), "--watch-pid", str(load.watch_pid),
            "--streams-per-channel", str(s.streams_per_channel), "--rpc", load.rpc,
        )  # fmt: skip
        if load.metadata:
            argv += ["--metadata", *load.metadata]
        if s.client_cpu is not None:
            argv += ["--cpu", str(s.client_cpu)]
        if latencies_out is not None:
            argv += ["--latencies-out", str(latencies_out)]
        budget = len(load.streams) * (duration + s.warmup_s + 60)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=budget, env=_env(), check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"load generator failed on {load.system}/{load.model}:\n{done.stderr[-3000:]}"
            )
        return [json.loads(line) for line in done.stdout.splitlines()]

    def ort_ceiling(self, model: str, model_file: Path) -> None:
        import subprocess

        argv = _python(
            "benchmarks.ort_ceiling", "--model-file", str(model_file),
            "--shape", *map(str, MODEL_SHAPES[model]), "--seconds", str(self.s.ort_seconds),
        )  # fmt: skip
        if self.s.server_cpus:
            argv += ["--cpu", str(min(self.s.server_cpus))]
        done = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        best = float(r["best_samples_per_s"])
        note = f"best batch {r['best_batch']}, {r['intra_op_threads']} intra-op thread(s)"
        self.rows.append(Row("ort ceiling (compute)", model, None, best, best, note=note))
        print(f"  ort ceiling {model}: {best:.0f} samples/s ({note})", flush=True)

    def stream_rpc_levels(self) -> list[int]:
        """Stream counts of the ModelStreamInfer rows: 32 (the p99 goal's) and the top one."""
        top = max(self.s.streams)
        return sorted({min(32, top), top})

    def stream_rpc_rows(self, system: str, target: str, pid: int) -> None:
        """The extra rows over ModelStreamInfer: one open call per client instead of a call
        per request."""
        if not self.s.stream_rpc:
            return
        for model in self.s.models:
            self.load(
                system, target, model, self.stream_rpc_levels(), pid, rpc="stream",
                note="ModelStreamInfer, 1 request in flight per call",
            )  # fmt: skip

    def canned(self) -> None:
        child = self.procs.start(
            "canned", _python("benchmarks.canned_server"), self.s.server_cpus, _env()
        )
        target = self.procs.wait_ready(child, READY, 60).group(1)
        for model in self.s.models:
            self.load("grpc canned (transport)", target, model, self.s.streams, child.pid)
        self.stream_rpc_rows("grpc canned, stream RPC", target, child.pid)
        top = max(self.s.streams)
        if self.s.client_batch > 1:
            self.load(
                "grpc canned, client batch", target, "lenet5", [top], child.pid,
                rows=self.s.client_batch, note=f"{self.s.client_batch} samples per request",
            )  # fmt: skip
        self.procs.stop(child)

    def _start_headrace(self, repo: Path, batching: bool, label: str = "") -> tuple[str, Child]:
        argv = _python(
            "headrace", "serve", "--repository", str(repo), "--port", "0", "--metrics-port", "0"
        )
        if not batching:
            argv.append("--no-batching")
        system = label or ("headrace batched" if batching else "headrace unbatched")
        name = "".join(c if c.isalnum() else "-" for c in system)
        child = self.procs.start(name, argv, self.s.server_cpus, _env())
        return self.procs.wait_ready(child, READY, 120).group(1), child

    def headrace(self, repo: Path) -> None:
        """headrace with and without batching, side by side: both servers run (on the same
        cores) and each point is measured on both in A B B A order (`side_by_side`), so that
        neither the machine's drift in speed (up to a fifth over minutes,
        docs/performance.md) nor the order of measuring decides the comparison. The idle
        server's CPU shows in the other% column."""
        batched, batched_child = self._start_headrace(repo, batching=True)
        try:
            unbatched, unbatched_child = self._start_headrace(repo, batching=False)
            try:
                servers = [
                    ("headrace batched", batched, batched_child.pid),
                    ("headrace unbatched", unbatched, unbatched_child.pid),
                ]
                for model in self.s.models:
                    for n in self.s.streams:
                        self.side_by_side(model, n, servers)
            finally:
                self.procs.stop(unbatched_child)
            self.stream_rpc_rows("headrace batched, stream RPC", batched, batched_child.pid)
            if self.s.client_batch > 1:
                self.load(
                    "headrace batched, client batch", batched, "lenet5", [max(self.s.streams)],
                    batched_child.pid, rows=self.s.client_batch,
                    note=f"{self.s.client_batch} samples per request",
                )  # fmt: skip
        finally:
            self.procs.stop(batched_child)

    def same_path(self, repo: Path) -> None:
        """The A/A check: two identical batched servers measured exactly as batched and
        unbatched are (`side_by_side`). Their gap is how far apart two endpoints measure
        when nothing differs but the process: the noise `SAME_PATH_NOISE` stands for."""
        children: list[Child] = []
        try:
            servers = []
            for system in AA_SYSTEMS:
                target, child = self._start_headrace(repo, batching=True, label=system)
                children.append(child)
                servers.append((system, target, child.pid))
            for model in self.s.models:
                for n in self.s.streams:
                    self.side_by_side(model, n, servers)
        finally:
            for child in children:
                self.procs.stop(child)

    def rayserve(self, files: dict[str, Path]) -> None:
        grpc_port, http_port = free_port(), free_port()
        argv = _python(
            "benchmarks.rayserve_app", "--grpc-port", str(grpc_port), "--http-port",
            str(http_port), "--max-batch-size", "64",
            "--batch-wait-timeout-s", str(self.s.max_queue_delay_us / 1e6),
        )  # fmt: skip
        for name, path in files.items():
            argv += ["--model", f"{name}={path}"]
        child = self.procs.start("rayserve", argv, self.s.server_cpus, _env())
        try:
            target = self.procs.wait_ready(child, READY, 300).group(1)
            for model in self.s.models:
                self.load(
                    "ray serve @serve.batch", target, model, self.s.streams, child.pid,
                    metadata=(f"application={model}",), note="Serve gRPC ingress",
                )  # fmt: skip
        finally:
            self.procs.stop(child, timeout_s=60)


def _settings(args: argparse.Namespace) -> tuple[Settings, str]:
    from serving.model_config import DynamicBatchingConfig

    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cpus) < 2:
        server_cpus, client_cpu = None, None
        pinning = "no pinning"
    else:
        server_cpus, client_cpu = {cpus[0]}, cpus[1]
        pinning = f"servers on core {cpus[0]}, generator on core {cpus[1]}"
    delay = args.max_queue_delay_us
    settings = Settings(
        models=args.models,
        streams=args.streams,
        duration_s=args.duration_s if args.duration_s is not None else (1.0 if args.quick else 5.0),
        warmup_s=0.3 if args.quick else 1.0,
        ort_seconds=0.2 if args.quick else 1.0,
        skip_rayserve=args.skip_rayserve,
        client_batch=args.client_batch,
        stream_rpc=not args.skip_stream_rpc,
        aa_check=args.aa_check,
        streams_per_channel=args.streams_per_channel,
        max_queue_delay_us=DynamicBatchingConfig().max_queue_delay_us if delay is None else delay,
        server_cpus=server_cpus,
        client_cpu=client_cpu,
    )
    return settings, pinning


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=None, help="per point (default 5)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument(
        "--models", nargs="+", choices=sorted(MODEL_SHAPES), default=["lenet5", "resnet20"]
    )
    parser.add_argument("--skip-rayserve", action="store_true")
    parser.add_argument(
        "--aa-check",
        action="store_true",
        help="also measure two identical batched servers side by side (the noise floor)",
    )
    parser.add_argument("--quick", action="store_true", help="short durations (smoke test)")
    parser.add_argument("--client-batch", type=int, default=8, help="extra row; 1 = skip it")
    parser.add_argument(
        "--skip-stream-rpc", action="store_true", help="no ModelStreamInfer rows (extra rows)"
    )
    parser.add_argument("--streams-per-channel", type=int, default=16)
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=None,
        help="headrace's and Ray Serve's batch wait (default: the model config's)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    settings, pinning = _settings(args)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally` stops every child

    scratch = tempfile.TemporaryDirectory(prefix="headrace-bench-serving-")
    root = Path(scratch.name)
    procs = Processes(root)
    bench = Bench(settings, procs)
    try:
        print(f"publishing {', '.join(settings.models)} (random weights) ...", flush=True)
        files = publish_models(root / "repository", settings.models, settings.max_queue_delay_us)
        for model in settings.models:
            bench.ort_ceiling(model, files[model])
        bench.canned()
        bench.headrace(root / "repository")
        if settings.aa_check:
            bench.same_path(root / "repository")
        if not settings.skip_rayserve:
            bench.rayserve(files)
    finally:
        procs.stop_all()
    print_table(bench.rows, settings, pinning)
    result = summarize(bench.rows, settings)
    if result["errors_total"]:
        print(f"WARNING: {result['errors_total']} failed requests (see the errors column)")
    print(json.dumps(result))
    scratch.cleanup()
    return result


if __name__ == "__main__":
    main()
