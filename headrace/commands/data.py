"""`headrace data ...`: look at datasets before training on them."""

from __future__ import annotations

from pathlib import Path

import click

from headrace.commands.options import FiniteFloatRange, refuse_unread_folder
from headrace.settings import load_settings

DEFAULT_INGESTED_TIMEOUT_S = 60.0


@click.group("data")
def data() -> None:
    """Inspect datasets; ingest training data from Kafka into shards."""


@data.command("profile")
@click.option("--dataset", required=True, help="digits, mnist or cifar10.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder of a file-based dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print only the profile as JSON.")
@click.option(
    "--ingested",
    is_flag=True,
    help="The records ingested from Kafka (`headrace data ingest`), as its class-counts Faust "
    "table says, instead of the dataset's files.",
)
@click.option("--group", help="With --ingested: the ingestion group (default headrace-ingest-*).")
@click.option("--bootstrap", help="With --ingested: Kafka bootstrap servers.")
@click.option(
    "--expect",
    type=click.IntRange(min=1),
    help="With --ingested: wait until this many are ingested.",
)
@click.option(
    "--timeout-s",
    type=FiniteFloatRange(min=0, min_open=True),
    help="With --ingested: longest time to read the table and wait for --expect  [default: 60]",
)
def profile(
    dataset: str,
    data_dir: Path | None,
    as_json: bool,
    ingested: bool,
    group: str | None,
    bootstrap: str | None,
    expect: int | None,
    timeout_s: float | None,
) -> None:
    """Class counts, imbalance ratio, per-channel mean/std and exact duplicates of DATASET.

    With --ingested: class counts of the records ingested so far and how far each
    partition of data-DATASET got (the bounds `headrace train --up-to-offset` takes).
    """
    import numpy as np

    from training.datasets import ImageArrays, load_raw
    from training.preprocess import profile_arrays

    ingest_flags = {"--group": group, "--bootstrap": bootstrap, "--expect": expect,
                    "--timeout-s": timeout_s}  # fmt: skip
    if ingested:
        if data_dir is not None:
            raise click.UsageError("--data-dir is for the dataset's files, not with --ingested")
        from headrace.commands.data_ingest import show_ingested_profile

        timeout = DEFAULT_INGESTED_TIMEOUT_S if timeout_s is None else timeout_s
        show_ingested_profile(dataset, bootstrap, group, expect, timeout, as_json)
        return
    if given := [flag for flag, value in ingest_flags.items() if value is not None]:
        raise click.UsageError(
            f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --ingested"
        )

    refuse_unread_folder(dataset, data_dir)
    raw = load_raw(dataset, data_dir or load_settings().data_dir)
    arrays = raw.data
    if raw.official_test is not None:
        arrays = ImageArrays(
            np.concatenate([arrays.images, raw.official_test.images]),
            np.concatenate([arrays.labels, raw.official_test.labels]),
        )
    result = profile_arrays(dataset, arrays, raw.classes)
    if as_json:
        click.echo(result.model_dump_json())
        return
    click.echo(f"dataset {result.dataset}: {result.samples} images of shape {result.image_shape}")
    click.echo("class      count")
    for name, count in result.class_counts.items():
        click.echo(f"{name:<10} {count:>5}")
    click.echo(f"imbalance ratio (largest / smallest): {result.imbalance_ratio:.2f}")
    means = ", ".join(f"{m:.4f}" for m in result.channel_mean)
    stds = ", ".join(f"{s:.4f}" for s in result.channel_std)
    click.echo(f"channel mean: {means}   std: {stds}")
    click.echo(
        f"exact duplicates: {result.exact_duplicates} "
        f"({result.conflicting_duplicates} with a conflicting label)"
    )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
