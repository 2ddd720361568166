"""`headrace stream worker`: consume inference requests, produce results or DLQ records."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from headrace.commands.options import build_config, refuse_metrics_host_without_port
from headrace.settings import load_settings


@click.group("stream")
def stream() -> None:
    """Kafka stream processing (Faust agents)."""


@stream.command("worker")
@click.option("--repository", type=click.Path(path_type=Path), help="Model repository folder.")
@click.option(
    "--bootstrap",
    help="Kafka bootstrap servers (default HEADRACE_KAFKA_BOOTSTRAP, else the embedded broker).",
)
@click.option("--group", help="Consumer group id (default HEADRACE_STREAM_GROUP).")
@click.option(
    "--concurrency",
    type=int,
    default=1,
    show_default=True,
    help="Batches run at once (and as many more awaiting acknowledgements).",
)
@click.option("--max-batch", type=int, default=64, show_default=True, help="Records per batch.")
@click.option(
    "--max-delay-ms", type=float, default=5.0, show_default=True, help="Longest wait for a batch."
)
@click.option(
    "--max-buffered",
    type=int,
    default=4096,
    show_default=True,
    help="Records fetched ahead of the batches; fetching pauses when the buffer is full.",
)
@click.option("--metrics-port", type=int, help="Prometheus /metrics port (0 = free; unset = off).")
@click.option(
    "--poll-interval-s",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds between repository scans for new versions (0 = off; model-updates "
    "announcements reload at once either way).",
)
@click.option(
    "--version-policy",
    default="latest",
    show_default=True,
    help="Versions of each model to serve, as `headrace serve --version-policy`: latest, "
    "latest:N, all or specific:1,2. A request's `version` reaches only these.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address /metrics listens on (0.0.0.0 in a container).",
)
@click.option(
    "--processing-guarantee",
    type=click.Choice(["at_least_once", "exactly_once"]),
    default="at_least_once",
    show_default=True,
    help="exactly_once: outcomes and offsets in one Kafka transaction per partition (needs "
    "Apache Kafka; checked at start, exit 2 if the broker's transactions do not hold).",
)
@click.option(
    "--loglevel",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)
def worker(
    repository: Path | None,
    bootstrap: str | None,
    group: str | None,
    concurrency: int,
    max_batch: int,
    max_delay_ms: float,
    max_buffered: int,
    metrics_port: int | None,
    poll_interval_s: float,
    version_policy: str,
    metrics_host: str,
    processing_guarantee: str,
    loglevel: str,
) -> None:
    """Run inference on `inference-requests`; each request gets one result or one DLQ record.

    Creates the catalogue topics if missing, loads every model of the repository,
    prints `stream worker ready group=... bootstrap=...` once consuming, and stops
    cleanly (exit 0) on SIGTERM or Ctrl-C. With `--processing-guarantee exactly_once`
    it first checks that the broker's transactions hold (streams/transactions.py).
    """
    from kafka.errors import KafkaError

    from headrace.commands.broker import resolve_bootstrap, unreachable
    from headrace.commands.serve import parse_version_policy
    from serving.repository import ModelRepository
    from streams.broker import answers_metadata
    from streams.config import StreamWorkerConfig
    from streams.topics import create_topics
    from streams.worker import run_worker

    refuse_metrics_host_without_port(metrics_port)
    settings = load_settings()
    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    config = build_config(
        StreamWorkerConfig,
        repository=repository or settings.model_repository,
        bootstrap=resolve_bootstrap(bootstrap),
        group_id=group or settings.stream_group,
        concurrency=concurrency,
        max_batch=max_batch,
        max_buffered=max_buffered,
        max_delay_s=max_delay_ms / 1000.0,
        metrics_port=metrics_port,
        poll_interval_s=poll_interval_s,
        version_policy=parse_version_policy(version_policy),
        metrics_host=metrics_host,
        processing_guarantee=processing_guarantee,
        broker_silence_s=settings.broker_silence_s,
        unassigned_warn_s=settings.unassigned_warn_s,
    )
    ModelRepository(config.repository).require_folder()
    if not answers_metadata(config.bootstrap, timeout_s=5.0):
        raise unreachable(config.bootstrap)
    try:
        create_topics(config.bootstrap)
    except KafkaError:
        raise unreachable(config.bootstrap) from None
    if config.processing_guarantee == "exactly_once":
        from streams import transactions

        transactions.require_transactions(config.bootstrap)

    def announce(fields: dict[str, str]) -> None:
        click.echo("stream worker ready " + " ".join(f"{k}={v}" for k, v in fields.items()))

    code = run_worker(config, announce, loglevel=loglevel)
    if code:
        raise SystemExit(code)
