"""`headrace topics create|list`: the topic catalogue on Kafka or the embedded broker."""

from __future__ import annotations

import json

import click

from headrace.commands.broker import answering_bootstrap

bootstrap_option = click.option(
    "--bootstrap",
    help="Kafka bootstrap servers (default HEADRACE_KAFKA_BOOTSTRAP, else the embedded broker).",
)


@click.group("topics")
def topics() -> None:
    """Create and list headrace's Kafka topics."""


@topics.command("create")
@bootstrap_option
@click.option("--dataset", "datasets", multiple=True, help="Also create data-<DATASET> topics.")
@click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    help="Copies of each partition (default: the catalogue's 1; 3 on a three-broker cluster).",
)
def create(
    bootstrap: str | None, datasets: tuple[str, ...], replication_factor: int | None
) -> None:
    """Create every catalogue topic that does not exist yet (safe to run again)."""
    from streams.topics import CATALOGUE, create_topics, data_topic, list_topics
    from training.datasets import DATASETS

    unknown = [name for name in datasets if name not in DATASETS]
    if unknown:
        raise click.BadParameter(
            f"no dataset {unknown[0]!r}; known: {', '.join(sorted(DATASETS))}",
            param_hint="--dataset",
        )
    specs = [*CATALOGUE, *(data_topic(name) for name in datasets)]
    if replication_factor is not None:
        specs = [s.model_copy(update={"replication_factor": replication_factor}) for s in specs]
    address = answering_bootstrap(bootstrap)
    outcome = create_topics(address, specs)
    partitions = list_topics(address)
    for spec in specs:
        if outcome[spec.name] == "created":
            detail = f"{spec.partitions} partitions, replication factor {spec.replication_factor}"
        else:  # as the cluster has it, which may differ from the catalogue
            detail = f"{partitions.get(spec.name, '?')} partitions (left as they are)"
        click.echo(f"{spec.name:<20} {outcome[spec.name]:<8} {detail}")


@topics.command("list")
@bootstrap_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def list_(bootstrap: str | None, as_json: bool) -> None:
    """Topics on the cluster with their partition counts."""
    from streams.topics import list_topics

    found = list_topics(answering_bootstrap(bootstrap))
    if as_json:
        click.echo(json.dumps(found))
        return
    for name, partitions in found.items():
        click.echo(f"{name:<20} {partitions} partitions")
