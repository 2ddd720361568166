"""The running half of `make demo`: the Kafka path and the gRPC path on a trained model.

Run as `python -m headrace.demo --repository DIR --model NAME [--requests 1000]`.
It starts the embedded broker, a stream worker and `headrace serve`; produces
real digits from the embedded dataset's test split as inference requests and
reads the results back (throughput, end-to-end latency percentiles, accuracy);
then sends a few digits through Triton's own client (`tritonclient.grpc`).
Everything it starts is stopped at the end, by pid, also on errors. A model the
repository does not hold, or a step that fails, is one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from headrace.errors import HeadraceError
from headrace.processes import stop_process
from serving.repository import ModelRepository
from streams.broker import EmbeddedBroker
from streams.producer import produce_requests
from streams.results import Summary, add_record, consume, read_manifest
from streams.topics import create_topics
from training.datasets import load_splits

WORKER_READY = "stream worker ready "
IDLE_S = 30.0  # give up when no outcome arrives for this long


def start_process(argv: list[str], ready_prefix: str) -> tuple[subprocess.Popen[str], str]:
    """Start a headrace command; returns it and its ready line once printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "headrace", *argv], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(ready_prefix):
            return process, line.strip()
    process.wait()
    raise HeadraceError(
        f"headrace {argv[0]} exited with code {process.returncode} before it was ready"
    )


def kafka_demo(repository: Path, model: str, requests: int, stack: ExitStack) -> None:
    """Broker + stream worker; produce `requests` digits; summarise the results topic."""
    broker = stack.enter_context(EmbeddedBroker())
    create_topics(broker.bootstrap)
    print(f"embedded broker on {broker.bootstrap}")
    worker, ready = start_process(
        ["stream", "worker", "--repository", str(repository), "--bootstrap", broker.bootstrap],
        WORKER_READY,
    )
    stack.callback(stop_process, worker)
    print(ready)
    test = load_splits("digits").test
    manifest = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "manifest.jsonl"
    started = time.perf_counter()
    seconds = produce_requests(
        broker.bootstrap, "inference-requests", model, test.images, test.labels, requests,
        manifest=manifest,
    )  # fmt: skip
    print(f"produced {requests} digit requests in {seconds:.2f} s")
    labels = read_manifest(manifest)
    summary = Summary()
    records = consume(
        broker.bootstrap, ["inference-results", "inference-dlq"], follow=False, idle_s=IDLE_S
    )
    for topic, value in records:  # stops early once every request is answered
        add_record(summary, topic, value, "inference-dlq", labels)
        if len(summary.request_ids & labels.keys()) >= requests:
            break
    records.close()
    elapsed = time.perf_counter() - started
    outcomes = len(summary.request_ids & labels.keys())
    print(
        f"{outcomes}/{requests} requests answered in {elapsed:.2f} s "
        f"({outcomes / elapsed:.0f} requests/s end to end, produce included); "
        f"{summary.results} results, DLQ {summary.dlq or 'empty'}, {summary.duplicates} duplicates"
    )
    p50, p99 = summary.latency_ms(50), summary.latency_ms(99)
    if p50 is not None and p99 is not None:
        print(f"end-to-end latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    if summary.accuracy is not None:
        print(f"accuracy from the results topic: {summary.accuracy:.4f}")


def grpc_demo(repository: Path, model: str, count: int) -> None:
    """`headrace serve` queried with tritonclient, in its own process: tritonclient's generated
    `inference` protos and ours cannot be loaded into one Python process."""
    argv = ["--repository", str(repository), "--model", model, "--count", str(count)]
    code = subprocess.run([sys.executable, "-m", "headrace.demo_grpc", *argv]).returncode
    if code:
        raise HeadraceError(f"the gRPC half of the demo exited with code {code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="lenet5-digits")
    parser.add_argument("--requests", type=int, default=1000, help="Kafka requests (0 = skip)")
    parser.add_argument("--grpc-count", type=int, default=8, help="digits sent over gRPC")
    args = parser.parse_args(argv)
    try:
        repository = ModelRepository(args.repository)
        repository.require_folder()
        repository.config(args.model)  # before anything starts: every request would go to DLQ
        with ExitStack() as stack:
            if args.requests > 0:
                kafka_demo(args.repository, args.model, args.requests, stack)
        grpc_demo(args.repository, args.model, args.grpc_count)
    except HeadraceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
