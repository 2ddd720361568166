"""`headrace produce` and `headrace results`: the two ends of the Kafka inference path."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from headrace.commands.broker import answering_bootstrap
from headrace.commands.options import refuse_unread_folder, typed
from headrace.errors import ConfigError, HeadraceError
from headrace.settings import load_settings

bootstrap_option = click.option(
    "--bootstrap",
    help="Kafka bootstrap servers (default HEADRACE_KAFKA_BOOTSTRAP, else the embedded broker).",
)


def _topic_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from streams.topics import TOPIC_NAME_RULE, valid_topic_name

    if not valid_topic_name(value):
        raise click.BadParameter(f"{value!r} is not a Kafka topic name ({TOPIC_NAME_RULE})")
    return value


def _model_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    # '' ended in a pydantic traceback; '../x' was sent, one DLQ record per request
    from serving.model_config import check_model_name

    try:
        return check_model_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # NaN passes `value <= 0`: --idle-s nan or inf ended in a traceback, --rate nan was taken
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise click.BadParameter("must be above 0" if value <= 0 else "must be a finite number")
    return value


MAX_IDLE_S = 366 * 24 * 3600
"""Longest --idle-s: a year (--follow reads for ever). 1e306 s became an infinite number of
milliseconds for the Kafka consumer: an OverflowError traceback."""


def _idle_seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    seconds = _positive(ctx, param, value)
    assert seconds is not None  # it has a default
    if seconds > MAX_IDLE_S:
        raise click.BadParameter(
            f"must be at most {MAX_IDLE_S:,} s (366 days); --follow reads until Ctrl-C"
        )
    return seconds


@click.command("produce")
@click.option(
    "--model", required=True, callback=_model_name, help="Model name in the workers' repository."
)
@click.option("--dataset", default="digits", show_default=True, help="Where samples come from.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder of a file dataset.")
@click.option("--n", "count", type=int, default=1000, show_default=True, help="Requests to send.")
@click.option(
    "--rate",
    type=float,
    callback=_positive,
    help="Requests per second (default: as fast as possible).",
)
@click.option(
    "--format",
    "payload_format",
    type=click.Choice(["json", "binary"]),
    default="json",
    show_default=True,
    help="OIP JSON, or binary ModelInferRequest (content-type header).",
)
@click.option("--topic", default="inference-requests", show_default=True, callback=_topic_name)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    help="Write request ids and true labels here, for `headrace results --manifest`.",
)
@bootstrap_option
def produce(
    model: str,
    dataset: str,
    data_dir: Path | None,
    count: int,
    rate: float | None,
    payload_format: str,
    topic: str,
    manifest: Path | None,
    bootstrap: str | None,
) -> None:
    """Send --n inference requests made of the real samples of the test split of --dataset
    (cycling through them when --n exceeds them)."""
    from tqdm import tqdm

    from streams.producer import produce_requests
    from training.datasets import load_splits

    if count < 1:
        raise click.BadParameter("must be at least 1", param_hint="--n")
    refuse_unread_folder(dataset, data_dir)
    test = load_splits(dataset, data_dir or load_settings().data_dir).test
    address = answering_bootstrap(bootstrap)
    with tqdm(total=count, unit="req", desc="producing", disable=None) as bar:
        seconds = produce_requests(
            address,
            topic,
            model,
            test.images,
            test.labels,
            count,
            payload_format,  # type: ignore[arg-type]
            rate,
            manifest,
            on_sent=lambda sent: _advance(bar, sent),
        )
    click.echo(f"produced {count} requests to {topic} in {seconds:.2f} s ({count / seconds:.0f}/s)")


def _print_record(record: Any) -> None:
    """One line for a result or a DLQ record."""
    from streams.messages import DLQRecord
    from streams.results import predicted_class

    if isinstance(record, DLQRecord):
        where = f"{record.error_code} ({record.stage})"
        click.echo(f"DLQ {record.request_id}: {where}: {record.message}")
        return
    click.echo(
        f"{record.request_id}: class {predicted_class(record)} "
        f"(model {record.model} v{record.model_version}, batch {record.timings.batch_size})"
    )


def _advance(bar: Any, sent: int) -> None:
    bar.update(sent)


@click.command("results")
@click.option("--topic", default="inference-results", show_default=True, callback=_topic_name)
@click.option("--dlq-topic", default="inference-dlq", show_default=True, callback=_topic_name)
@click.option("--follow", is_flag=True, help="Keep reading new records until Ctrl-C.")
@click.option(
    "--idle-s",
    type=float,
    default=5.0,
    show_default=True,
    callback=_idle_seconds,
    help="Stop after this quiet (not with --follow).",
)
@click.option(
    "--expect",
    type=click.IntRange(min=1),
    help="Stop once this many distinct request ids (of the manifest, if given) have an outcome.",
)
@click.option(
    "--manifest",
    "manifests",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Request ids and labels from `headrace produce --manifest` (repeatable): only those "
    "requests' outcomes are read, and accuracy is reported.",
)
@click.option("--quiet", is_flag=True, help="Only the summary, not one line per record.")
@click.option("--json", "as_json", is_flag=True, help="Print only the summary as JSON.")
@bootstrap_option
def results(
    topic: str,
    dlq_topic: str,
    follow: bool,
    idle_s: float,
    expect: int | None,
    manifests: tuple[Path, ...],
    quiet: bool,
    as_json: bool,
    bootstrap: str | None,
) -> None:
    """Print results and DLQ records from the beginning, then a summary (accuracy with labels)."""
    from streams.results import Summary, add_record, consume, read_manifest

    if follow and typed("idle_s"):  # the consumer then waits for ever: it went unread
        raise ConfigError(
            f"--idle-s {idle_s:g} does not apply with --follow, which reads until Ctrl-C "
            "however quiet the topics: leave --follow out to stop after --idle-s of quiet, "
            "or leave --idle-s out"
        )
    labels = {k: v for m in manifests for k, v in read_manifest(m).items()} if manifests else None
    summary = Summary()
    address = answering_bootstrap(bootstrap)
    try:
        for record_topic, value in consume(address, [topic, dlq_topic], follow, idle_s):
            record = add_record(summary, record_topic, value, dlq_topic, labels)
            if record is not None and not (quiet or as_json):
                _print_record(record)
            if expect is not None and len(summary.request_ids) >= expect:
                break
    except KeyboardInterrupt:
        pass  # the end of the reading, as the topics going quiet: the summary follows
    report = {
        "results": summary.results,
        "dlq": summary.dlq,
        "distinct_request_ids": len(summary.request_ids),
        "duplicates": summary.duplicates,
        "other_requests": summary.others,
        "latency_p50_ms": summary.latency_ms(50),
        "latency_p99_ms": summary.latency_ms(99),
        "accuracy": summary.accuracy,
    }
    if as_json:
        click.echo(json.dumps(report))
        _check_expected(expect, len(summary.request_ids), None if follow else idle_s)
        return
    click.echo(
        f"{summary.results} results, {sum(summary.dlq.values())} DLQ records {summary.dlq}, "
        f"{summary.duplicates} duplicates"
    )
    if summary.others:
        click.echo(f"{summary.others} records of requests not in the manifest skipped")
    if summary.latencies_s:
        click.echo(
            f"end-to-end latency p50 {report['latency_p50_ms']:.1f} ms, "
            f"p99 {report['latency_p99_ms']:.1f} ms"
        )
    if summary.accuracy is not None:
        click.echo(f"accuracy {summary.accuracy:.4f} on {summary.labelled} labelled results")
    _check_expected(expect, len(summary.request_ids), None if follow else idle_s)


def _check_expected(expect: int | None, seen: int, idle_s: float | None) -> None:
    """HeadraceError (exit 2) when the reading ended with fewer outcomes than --expect;
    `idle_s` None for a --follow reading, which only Ctrl-C ends."""
    if expect is None or seen >= expect:
        return
    if idle_s is None:
        ended = "was stopped (Ctrl-C) without the others"
        advice = "Read again, and wait longer before Ctrl-C"
    else:
        ended = f"ended (topics quiet for --idle-s {idle_s:g} s, or Ctrl-C) without the others"
        advice = "Read again with a longer --idle-s"
    raise HeadraceError(
        f"{seen} of the {expect} expected requests have an outcome; the reading {ended}: are "
        f"`headrace stream worker` and the producer running? {advice}"
    )
