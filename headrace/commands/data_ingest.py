"""`headrace data ingest` and `headrace data publish`: training data through Kafka.

`publish` produces real samples of a dataset (and, on request, bad records) to
`data-<dataset>`; `ingest` runs the Faust worker that validates them, appends
the good ones to shards and sends the bad ones to `data-dlq`;
`headrace data profile --ingested` (in `headrace.commands.data`) shows the
class balance it keeps in its Faust table.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

from headrace.commands.broker import answering_bootstrap, resolve_bootstrap, unreachable
from headrace.commands.options import build_config, refuse_unread_folder
from headrace.errors import HeadraceError
from headrace.settings import load_settings

bootstrap_option = click.option(
    "--bootstrap",
    help="Kafka bootstrap servers (default HEADRACE_KAFKA_BOOTSTRAP, else the embedded broker).",
)
data_root_option = click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    help="Shards live in DATA_ROOT/<dataset>/shards (default HEADRACE_DATA_ROOT or ./data).",
)


def reachable(bootstrap_flag: str | None, dataset: str) -> str:
    """The bootstrap servers, once they answer; the catalogue and data topics created."""
    from kafka.errors import KafkaError

    from streams.topics import CATALOGUE, create_topics, data_topic

    bootstrap = answering_bootstrap(bootstrap_flag)
    try:
        create_topics(bootstrap, [*CATALOGUE, data_topic(dataset)])
    except KafkaError:
        raise unreachable(bootstrap) from None
    return bootstrap


def require_writable(shards: Path) -> None:
    """Create the shards folder now: a data root that cannot hold it failed only at the first
    batch, after the worker had said it was ready."""
    try:
        shards.mkdir(parents=True, exist_ok=True)
        writable = os.access(shards, os.W_OK | os.X_OK)
    except OSError as exc:
        reason: str | None = exc.strerror
    else:
        reason = None if writable else "not writable"
    if reason is not None:
        raise HeadraceError(
            f"cannot write shards to {shards} ({reason}); pass --data-root (or set "
            "HEADRACE_DATA_ROOT) to a folder you can write"
        )


@click.command("ingest")
@click.option("--dataset", required=True, help="digits, mnist or cifar10: the records' schema.")
@bootstrap_option
@data_root_option
@click.option("--group", help="Consumer group (default headrace-ingest-<dataset>).")
@click.option(
    "--flush-records", type=int, default=500, show_default=True, help="Most records a shard."
)
@click.option(
    "--flush-interval-s",
    type=float,
    default=2.0,
    show_default=True,
    help="Longest wait before a shard is written, in seconds.",
)
@click.option(
    "--loglevel",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)
def ingest(
    dataset: str,
    bootstrap: str | None,
    data_root: Path | None,
    group: str | None,
    flush_records: int,
    flush_interval_s: float,
    loglevel: str,
) -> None:
    """Validate records of data-DATASET into shards; bad ones go to data-dlq with a reason.

    Prints `data ingest ready ...` once it consumes, keeps the class balance in
    a Faust table (`headrace data profile --dataset DATASET --ingested` shows
    it) and stops cleanly (exit 0) on SIGTERM or Ctrl-C.
    """
    from streams.ingest_app import IngestConfig, run_ingest

    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    settings = load_settings()
    config = build_config(
        IngestConfig,
        dataset=dataset,
        broker_silence_s=settings.broker_silence_s,
        bootstrap=resolve_bootstrap(bootstrap),
        data_root=data_root or settings.data_root,
        group_id=group or "",
        flush_records=flush_records,
        flush_interval_s=flush_interval_s,
    )
    require_writable(config.shards)
    reachable(config.bootstrap, dataset)

    def announce(fields: dict[str, str]) -> None:
        click.echo("data ingest ready " + " ".join(f"{k}={v}" for k, v in fields.items()))

    code = run_ingest(config, announce, loglevel=loglevel)
    if code:
        raise SystemExit(code)


@click.command("publish")
@click.option("--dataset", default="digits", show_default=True, help="Where samples come from.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder of a file dataset.")
@click.option("--n", "count", type=int, default=500, show_default=True, help="Good records.")
@click.option(
    "--bad",
    type=int,
    default=0,
    show_default=True,
    help="Bad records spread among them (not JSON, wrong schema, wrong shape, pixel or label "
    "out of range, tombstone, in turn).",
)
@click.option(
    "--id-prefix", default="rec", show_default=True, help="Record ids are PREFIX-<index>."
)
@click.option("--compact", is_flag=True, help="Pixels as base64 bytes instead of a JSON list.")
@bootstrap_option
def publish(
    dataset: str,
    data_dir: Path | None,
    count: int,
    bad: int,
    id_prefix: str,
    compact: bool,
    bootstrap: str | None,
) -> None:
    """Produce COUNT real samples of DATASET as records on data-DATASET (for demos and tests)."""
    from tqdm import tqdm

    from streams.data_producer import plan_records, publish_records
    from streams.topics import data_topic
    from training.datasets import dataset_schema, load_raw

    if count < 1 or bad < 0:
        raise click.BadParameter("--n must be at least 1 and --bad at least 0")
    refuse_unread_folder(dataset, data_dir)
    schema = dataset_schema(dataset)
    raw = load_raw(dataset, data_dir or load_settings().data_dir)
    records = plan_records(schema, raw.data.images, raw.data.labels, count, bad, id_prefix, compact)
    topic = data_topic(dataset).name
    address = reachable(bootstrap, dataset)
    with tqdm(total=len(records), unit="rec", desc="publishing", disable=None) as bar:
        seconds = publish_records(address, topic, records, on_sent=lambda sent: _advance(bar, sent))
    kinds = sorted({r.bad for r in records if r.bad})
    click.echo(
        f"published {count} records and {bad} bad ones ({', '.join(kinds) or 'none'}) "
        f"to {topic} in {seconds:.2f} s"
    )


def _advance(bar: Any, sent: int) -> None:
    bar.update(sent)


def show_ingested_profile(
    dataset: str,
    bootstrap: str | None,
    group: str | None,
    expect: int | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """`headrace data profile --ingested`: the class-counts table, latest value per partition."""
    from streams.ingest_app import changelog_topic, default_group
    from streams.ingest_profile import ingested_profile, profile_json, read_class_counts
    from training.datasets import dataset_schema

    schema = dataset_schema(dataset)
    topic = changelog_topic(group or default_group(dataset))
    counts = read_class_counts(
        answering_bootstrap(bootstrap), topic, dataset, expect, timeout_s=timeout_s
    )
    profile = ingested_profile(schema, counts, topic, expect)
    if as_json:
        click.echo(profile_json(profile))
    else:
        click.echo(
            f"dataset {dataset} (ingested; table {topic}): {profile.records} records "
            f"of shape {profile.image_shape}"
        )
        click.echo("class      count")
        for name, number in profile.class_counts.items():
            click.echo(f"{name:<10} {number:>5}")
        click.echo(f"imbalance ratio (largest / smallest): {profile.imbalance_ratio:.2f}")
        click.echo("partition  records  next offset")
        for partition, progress in profile.partitions.items():
            click.echo(f"{partition:<10} {progress.records:>7}  {progress.next_offset:>11}")
        if profile.partitions:
            click.echo(
                f"train on exactly these: --from-shards --up-to-offset {profile.up_to_offset}"
            )
    for warning in profile.warnings:
        click.echo(f"warning: {warning}", err=True)
    if expect is not None and profile.records < expect:
        raise HeadraceError(
            f"{profile.records} of {expect} records ingested after {timeout_s:g} s; is "
            f"`headrace data ingest --dataset {dataset}` running?"
        )
