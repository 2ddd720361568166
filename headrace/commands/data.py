"""`headrace data ...`: look at datasets before training on them."""

from __future__ import annotations

from pathlib import Path

import click

from headrace.settings import load_settings


@click.group("data")
def data() -> None:
    """Inspect datasets."""


@data.command("profile")
@click.option("--dataset", required=True, help="digits, mnist or cifar10.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder of a file-based dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print only the profile as JSON.")
def profile(dataset: str, data_dir: Path | None, as_json: bool) -> None:
    """Class counts, imbalance ratio, per-channel mean/std and exact duplicates of DATASET."""
    import numpy as np

    from training.datasets import ImageArrays, load_raw
    from training.preprocess import profile_arrays

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
