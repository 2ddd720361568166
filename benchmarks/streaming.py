"""Benchmark: requests end to end through Kafka, the Faust batching pipeline against naive.

For LeNet-5 and resnet20 (random weights, uint8 pixels preprocessed by the
consumer as the model's config says), and for JSON and binary OIP payloads:

- **pipeline**: `headrace stream worker` (`benchmarks.stream_worker`: the same
  `streams.worker.run_worker`, with fresh topics) batching records with
  Faust's `take_events` and the dynamic batcher;
- **naive**: `benchmarks.naive_consumer`, one record at a time (decode,
  preprocess, ONNX Runtime at batch 1, produce with acks=all and wait,
  commit), the way Kafka-ML's inference consumer works;
- **broker ceiling**: the same encoded records produced (kafka-python,
  acks=all, all acknowledgements awaited) and consumed back, by one client;
  rate = N / (produce seconds + consume seconds);
- **ORT ceiling**: ONNX Runtime alone at its best batch size with the
  worker's thread settings (`benchmarks.ort_ceiling`);
- **p99 at half the peak**: the pipeline fed by a paced producer at 50% of the
  LeNet pipeline's measured rate; latency = result `produced_at` minus the
  request's `created_at` (binary requests carry no `created_at`: the
  producer's send time, taken the same way, stands in). The benchmark's own
  garbage collector is off while it sends and reads, so that its pauses are
  not counted as the pipeline's.

How throughput is measured: each row has its own results/DLQ topics and
consumer group (rows never see each other's records; the pipeline and naive
rows of a model and format read the same pre-produced request topic, each
with a fresh group). All N requests are produced first; then the consumer
side starts and a separate reader consumes the results and DLQ topics until
it has N distinct outcomes. Rate = (N - 1) / (last - first outcome's
`produced_at`), i.e. steady state from the first outcome on, without process
start-up and group join; `wall s` is from the consumer's start to the reader
seeing the N-th outcome.

One embedded broker (Tansu) per run. The worker / naive consumer / ORT
ceiling / broker-ceiling client run on core 0; the broker, the producer and
the reader on core 1 (when there are two cores). CPU columns are % of one
core over the row's window (for consumer rows: from the consumer's start,
so start-up and group join are in it); `other%` is the machine's busy time
that is not ours (other people's load).

    python -m benchmarks.streaming [--n 20000] [--models lenet5 resnet20]
        [--formats json binary] [--skip-naive] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import machine_cpu_seconds, tree_cpu_seconds
from benchmarks.procs import Child, Processes
from benchmarks.serving import _env, _python
from benchmarks.serving_report import cell
from benchmarks.streaming_kafka import (
    Encoded,
    consume_count,
    create,
    new_producer,
    produce,
    read_outcomes,
)
from benchmarks.streaming_report import (
    Row,
    Settings,
    find_row,
    headline_format,
    print_table,
    summarize,
)
from headrace.gc_pauses import collector_paused

MODEL_SHAPES: dict[str, tuple[int, ...]] = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}
DISTINCT_IMAGES = 256
WORKER_READY = r"stream worker ready"
NAIVE_READY = r"naive consumer ready"


class CpuWindow:
    """CPU seconds of the consumer tree, the broker, this process and the machine over a window."""

    def __init__(self, broker_pid: int, consumer_pid: int | None) -> None:
        self.broker_pid, self.consumer_pid = broker_pid, consumer_pid
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float, float]:
        consumer = tree_cpu_seconds(self.consumer_pid) if self.consumer_pid else 0.0
        return (
            time.perf_counter(),
            consumer,
            tree_cpu_seconds(self.broker_pid),
            time.process_time(),
            machine_cpu_seconds(),
        )

    def finish(self, row: Row) -> Row:
        end = self._sample()
        wall = end[0] - self.start[0]
        pct = [100 * (e - s) / wall for s, e in zip(self.start[1:], end[1:], strict=True)]
        consumer, broker, client, machine = pct
        row.consumer_cpu_pct = round(consumer, 1) if self.consumer_pid else None
        row.broker_cpu_pct = round(broker, 1)
        row.client_cpu_pct = round(client, 1)
        row.other_cpu_pct = round(max(0.0, machine - consumer - broker - client), 1)
        return row


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run the block on `cpu` (this thread; threads it starts inherit the affinity)."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def publish_models(root: Path, models: list[str]) -> None:
    """Random-weight models with a pixel preprocessing spec (uint8 requests -> FP32 input)."""
    import torch

    from serving.model_config import ModelConfig, PreprocessingSpec, TensorSpec
    from serving.repository import ModelRepository
    from training.export import INPUT_NAME, OUTPUT_NAME, export_onnx
    from training.models import build_model

    torch.manual_seed(0)
    repository = ModelRepository(root)
    with tempfile.TemporaryDirectory(prefix="headrace-bench-export-") as tmp:
        for name in models:
            shape = MODEL_SHAPES[name]
            onnx_path = export_onnx(build_model(name), shape, Path(tmp) / f"{name}.onnx")
            channels = shape[0]
            config = ModelConfig(
                name=name,
                max_batch_size=64,
                inputs=[TensorSpec(name=INPUT_NAME, datatype="FP32", dims=list(shape))],
                outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", dims=[10])],
                preprocessing=PreprocessingSpec(mean=[0.5] * channels, std=[0.25] * channels),
            )
            repository.publish(config, onnx_path, architecture=name)


def images(model: str, count: int = DISTINCT_IMAGES) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(count, *MODEL_SHAPES[model]), dtype=np.uint8)


def encode_all(model: str, fmt: str, n: int) -> Encoded:
    """N request records (unique ids, the images cycled), encoded as `headrace produce` does."""
    from streams.producer import encode_sample

    pixels = images(model)
    prefix = uuid.uuid4().hex[:8]
    out: Encoded = []
    for i in range(n):
        request_id = f"{prefix}-{i:07d}"
        value, headers = encode_sample(request_id, model, pixels[i % len(pixels)], fmt)  # type: ignore[arg-type]
        out.append((request_id.encode(), value, headers))
    return out


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1000) if values else None


class Bench:
    """Every measurement of one run."""

    def __init__(self, s: Settings, procs: Processes, broker: Any, repo: Path) -> None:
        self.s, self.procs, self.broker, self.repo = s, procs, broker, repo
        self.rows: list[Row] = []
        self.bootstrap: str = broker.bootstrap
        self.broker_pid: int = broker.process.pid

    def add(self, row: Row) -> None:
        self.rows.append(row)
        extra = f" p99 {row.p99_ms:.1f} ms" if row.p99_ms is not None else ""
        print(
            f"  {row.system:<24} {row.model:<9} {row.fmt:<6} {row.rps:>9.1f} req/s{extra}"
            f"  other cpu {cell(row.other_cpu_pct, '.0f')}%",
            flush=True,
        )

    def ort_ceiling(self, model: str) -> None:
        import subprocess

        from serving.repository import ModelRepository

        model_file = ModelRepository(self.repo).latest(model).model_file
        argv = _python(
            "benchmarks.ort_ceiling", "--model-file", str(model_file),
            "--shape", *map(str, MODEL_SHAPES[model]), "--seconds", str(self.s.ort_seconds),
        )  # fmt: skip
        if self.s.worker_cpu is not None:
            argv += ["--cpu", str(self.s.worker_cpu)]
        started, machine = time.perf_counter(), machine_cpu_seconds()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter() - started
        ours = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        other = 100 * (machine_cpu_seconds() - machine - ours) / wall
        r = json.loads(done.stdout.strip().splitlines()[-1])
        best = float(r["best_samples_per_s"])
        note = f"best batch {r['best_batch']}, {r['intra_op_threads']} intra-op thread(s)"
        row = Row("ort ceiling (compute)", model, "-", 0, best, wall_s=wall, note=note)
        row.consumer_cpu_pct = round(100 * ours / wall, 1)
        row.other_cpu_pct = round(max(0.0, other), 1)
        self.add(row)

    def broker_ceiling(self, model: str, fmt: str, topic: str, records: Encoded) -> None:
        """Produce the records to `topic` (the rows' request topic) and consume them back."""
        window = CpuWindow(self.broker_pid, None)
        with pinned(self.s.worker_cpu):
            produce_s = produce(self.bootstrap, topic, records)
            consume_s = consume_count(self.bootstrap, topic, len(records))
        n = len(records)
        size = sum(len(v) for _, v, _ in records) / n
        note = (
            f"produce {n / produce_s:.0f}/s + consume {n / consume_s:.0f}/s, "
            f"{size:.0f} B/record, client on the worker's core"
        )
        row = Row("broker ceiling", model, fmt, n, n / (produce_s + consume_s), note=note)
        row.wall_s = produce_s + consume_s
        self.add(window.finish(row))

    def _consumer_argv(self, kind: str, model: str, tag: str) -> tuple[list[str], str, str, str]:
        results, dlq, group = f"res-{tag}", f"dlq-{tag}", f"group-{tag}"
        create(self.bootstrap, results, dlq)
        common = [
            "--repository", str(self.repo), "--bootstrap", self.bootstrap, "--group", group,
            "--results-topic", results, "--dlq-topic", dlq,
        ]  # fmt: skip
        if kind == "pipeline":
            argv = _python(
                "benchmarks.stream_worker", *common,
                "--concurrency", str(self.s.concurrency), "--max-batch", str(self.s.max_batch),
                "--max-delay-ms", str(self.s.max_delay_ms),
            )  # fmt: skip
        else:
            argv = _python("benchmarks.naive_consumer", *common, "--model", model)
        return argv, results, dlq, group

    def _start(self, kind: str, model: str, tag: str, requests: str) -> tuple[Child, str, str]:
        argv, results, dlq, _ = self._consumer_argv(kind, model, tag)
        argv += ["--requests-topic", requests]
        cpus = {self.s.worker_cpu} if self.s.worker_cpu is not None else None
        return self.procs.start(f"{kind}-{tag}", argv, cpus, _env()), results, dlq

    def end_to_end(self, kind: str, model: str, fmt: str, requests: str) -> None:
        """Start the consumer side on the pre-produced `requests` topic; time N outcomes."""
        tag = f"{kind}-{model}-{fmt}-{uuid.uuid4().hex[:6]}"
        started = time.perf_counter()
        child, results, dlq = self._start(kind, model, tag, requests)
        window = CpuWindow(self.broker_pid, child.pid)
        try:
            out = read_outcomes(self.bootstrap, results, dlq, self.s.n, child, started)
            row = window.finish(Row(kind, model, fmt, self.s.n, out.rate(), out.wall_s))
        finally:
            self.procs.stop(child)
        row.dlq = out.dlq
        if kind == "pipeline":
            row.note = (
                f"concurrency {self.s.concurrency}, max_batch {self.s.max_batch}, "
                f"max_delay {self.s.max_delay_ms:g} ms"
            )
        else:
            row.note = "1 record at a time, batch 1, sync produce + commit"
        self.add(row)

    def paced(self, model: str, fmt: str, rate: float) -> None:
        """The pipeline fed at `rate` requests/s; end-to-end latency percentiles."""
        from streams.producer import encode_sample

        n = max(100, min(self.s.n, int(rate * self.s.p99_seconds)))
        tag = f"paced-{model}-{fmt}-{uuid.uuid4().hex[:6]}"
        requests = f"req-{tag}"
        create(self.bootstrap, requests)
        child, results, dlq = self._start("pipeline", model, tag, requests)
        sent_at: dict[str, float] = {}
        pixels = images(model)
        errors: list[BaseException] = []

        def send_all() -> None:
            try:
                producer = new_producer(self.bootstrap)
                try:
                    prefix, begin = uuid.uuid4().hex[:8], time.perf_counter()
                    futures = []
                    for i in range(n):
                        delay = begin + i / rate - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                        rid = f"{prefix}-{i:07d}"
                        sent_at[rid] = time.time()
                        value, headers = encode_sample(rid, model, pixels[i % len(pixels)], fmt)  # type: ignore[arg-type]
                        futures.append(
                            producer.send(requests, key=rid.encode(), value=value, headers=headers)
                        )
                    producer.flush()
                    for future in futures:
                        future.get(timeout=60)
                finally:
                    producer.close()
            except BaseException as exc:  # reported by the caller
                errors.append(exc)

        try:
            self.procs.wait_ready(child, WORKER_READY, 120)
            # This process's own collections (this process holds every row's records) stopped
            # the producer and reader for 136 to 194 ms, counted as the pipeline's latency.
            with collector_paused():
                window = CpuWindow(self.broker_pid, child.pid)
                sender = threading.Thread(target=send_all, name="paced-producer", daemon=True)
                started = time.perf_counter()
                sender.start()
                out = read_outcomes(self.bootstrap, results, dlq, n, child, started)
                sender.join(60)
                row = window.finish(Row("pipeline @ 50% peak", model, fmt, n, 0.0, out.wall_s))
        finally:
            self.procs.stop(child)
        if errors:
            raise RuntimeError(f"paced producer failed: {errors[0]!r}")
        latencies = [
            out.produced_at[rid] - out.created_at.get(rid, sent_at[rid])
            for rid in out.produced_at
            if rid in sent_at
        ]
        row.rps = out.rate()
        row.p50_ms, row.p99_ms = _pct(latencies, 50), _pct(latencies, 99)
        row.dlq = out.dlq
        origin = "created_at" if out.created_at else "send time"
        queued = list(out.queue_s.values())
        row.note = (
            f"offered {rate:.0f}/s; latency = produced_at - {origin}; of which request "
            f"timestamp -> model run p50 {_pct(queued, 50) or 0:.1f} / p99 "
            f"{_pct(queued, 99) or 0:.1f} ms"
        )
        self.add(row)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="requests per row (default 20000)")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(MODEL_SHAPES), default=["lenet5", "resnet20"]
    )
    parser.add_argument(
        "--formats", nargs="+", choices=["json", "binary"], default=["json", "binary"]
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--concurrency", type=int, default=1, help="worker's batches in flight")
    parser.add_argument("--max-batch", type=int, default=64, help="worker's records per batch")
    parser.add_argument("--max-delay-ms", type=float, default=5.0, help="worker's batch wait")
    parser.add_argument("--skip-p99", action="store_true", help="no paced latency row")
    parser.add_argument("--quick", action="store_true", help="n=2000 (smoke test)")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (2000 if args.quick else 20000)
    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cpus) < 2:
        worker_cpu, client_cpu, pinning = None, None, "no pinning"
    else:
        worker_cpu, client_cpu = cpus[0], cpus[1]
        pinning = (
            f"worker/naive consumer/ORT ceiling/broker-ceiling client on core {worker_cpu}, "
            f"broker/producer/reader on core {client_cpu}"
        )
    s = Settings(
        n=n,
        models=args.models,
        formats=args.formats,
        skip_naive=args.skip_naive,
        concurrency=args.concurrency,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        ort_seconds=0.2 if args.quick else 1.0,
        worker_cpu=worker_cpu,
        client_cpu=client_cpu,
        p99_seconds=2.0 if args.quick else 10.0,
    )
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally` stops every child

    from streams.broker import EmbeddedBroker

    scratch = tempfile.TemporaryDirectory(prefix="headrace-bench-streaming-")
    root = Path(scratch.name)
    procs = Processes(root)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # the broker (started next) inherits it
    broker = EmbeddedBroker()
    bench: Bench | None = None
    try:
        broker.start(log_file=root / "broker.log")
        print(f"broker {broker.bootstrap}; publishing {', '.join(s.models)} ...", flush=True)
        publish_models(root / "repository", s.models)
        bench = Bench(s, procs, broker, root / "repository")
        for model in s.models:
            bench.ort_ceiling(model)
        for model in s.models:
            for fmt in s.formats:
                records = encode_all(model, fmt, n)
                requests = f"req-{model}-{fmt}-{uuid.uuid4().hex[:6]}"
                create(broker.bootstrap, requests)
                bench.broker_ceiling(model, fmt, requests, records)
                del records
                bench.end_to_end("pipeline", model, fmt, requests)
                if not s.skip_naive:
                    bench.end_to_end("naive", model, fmt, requests)
        peak = find_row(bench.rows, "pipeline", "lenet5", headline_format(s.formats))
        if not args.skip_p99 and peak is not None and not math.isnan(peak.rps):
            bench.paced("lenet5", headline_format(s.formats), peak.rps / 2)
    finally:
        procs.stop_all()
        broker.stop()
        os.sched_setaffinity(0, set(cpus))
    print_table(bench.rows, s, pinning)
    result = summarize(bench.rows, s)
    print(json.dumps(result))
    scratch.cleanup()
    return result


if __name__ == "__main__":
    main()
