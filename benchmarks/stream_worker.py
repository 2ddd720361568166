"""`headrace stream worker` with its topic names as options, for benchmarks that need fresh topics.

The CLI consumes the catalogue topics (`inference-requests`, ...); a benchmark
row needs topics of its own so that rows never see each other's records. This
runs the very same worker (`streams.worker.run_worker`: Faust app, batching
agent, dataplane, dynamic batcher) with the topics given here, and prints the
CLI's ready line:

    python -m benchmarks.stream_worker --repository R --bootstrap B --group G \
        --requests-topic req --results-topic res --dlq-topic dlq [--concurrency 1]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--requests-topic", required=True)
    parser.add_argument("--results-topic", required=True)
    parser.add_argument("--dlq-topic", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s %(message)s")

    from streams.config import StreamWorkerConfig
    from streams.worker import run_worker

    config = StreamWorkerConfig(
        repository=args.repository,
        bootstrap=args.bootstrap,
        group_id=args.group,
        concurrency=args.concurrency,
        max_batch=args.max_batch,
        max_delay_s=args.max_delay_ms / 1000.0,
        requests_topic=args.requests_topic,
        results_topic=args.results_topic,
        dlq_topic=args.dlq_topic,
    )

    def announce(fields: dict[str, str]) -> None:
        line = "stream worker ready " + " ".join(f"{k}={v}" for k, v in fields.items())
        print(line, flush=True)

    return run_worker(config, announce)


if __name__ == "__main__":
    raise SystemExit(main())
