"""`headrace security robustness`: clean, FGSM and PGD accuracy of a published model.

The model's torch weights come from the repository through
`training.published.load_published_model` (sha256-checked, read with
`weights_only=True`); its normalisation from the preprocessing the version
records in its metadata.json (each version keeps its own); its test split from
`lineage_splits`, with the seed and fractions its lineage records (and, for a model
trained on ingested shards, the same shard selection), so the samples are the
ones the model never trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from headrace.commands.options import MAX_SEED, MAX_THREADS, refuse_unread_data_dir
from headrace.errors import ConfigError
from headrace.settings import load_settings


class ModelRobustness(BaseModel):
    """One report: which model, which data, and the accuracies (`--json` prints it)."""

    model: str
    version: int
    architecture: str
    dataset: str
    split: str
    report: dict[str, Any]


def _epsilons(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--epsilons must be numbers separated by commas, not {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise ConfigError(f"--epsilons must be between 0 and 1 (pixels in [0, 1]), not {text!r}")
    return values


@click.group("security")
def security() -> None:
    """Security reports on published models (adversarial robustness)."""


@security.command("robustness")
@click.option("--model", "name", required=True, help="Published model name.")
@click.option(
    "--version",
    type=click.IntRange(min=1),
    help="Version [default: the latest one not compressed].",
)
@click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    help="Model repository [default: HEADRACE_MODEL_REPOSITORY or ./model_repository].",
)
@click.option("--dataset", help="Dataset to attack [default: the one the model trained on].")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder of a file-based dataset.")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="For a model trained on ingested shards: their data root "
    "[default: HEADRACE_DATA_ROOT or ./data].",
)
@click.option(
    "--epsilons", default="0,0.1,0.2,0.3", show_default=True, help="L-inf radii, [0,1] pixels."
)
@click.option("--steps", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--step-size", type=float, help="PGD step [default: 2.5 * epsilon / steps].")
@click.option("--limit", type=click.IntRange(min=1), help="Attack only the first N test samples.")
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=MAX_SEED),
    default=0,
    show_default=True,
    help="Seeds PGD's random start.",
)
@click.option(
    "--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=1, show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print only the report as JSON.")
def robustness(
    name: str,
    version: int | None,
    repository: Path | None,
    dataset: str | None,
    data_dir: Path | None,
    data_root: Path | None,
    epsilons: str,
    steps: int,
    step_size: float | None,
    limit: int | None,
    seed: int,
    threads: int,
    as_json: bool,
) -> None:
    """Accuracy of model NAME under FGSM and PGD (L-inf, pixels in [0, 1]) on its test split."""
    import torch

    from security.adversarial import robustness_report
    from serving.repository import ModelRepository
    from training.adversarial import published_pixel_model
    from training.compression.sources import uncompressed_version, version_ref
    from training.datasets import lineage_splits, load_splits, unread_root

    radii = _epsilons(epsilons)
    if step_size is not None and not 0 < step_size <= 1:
        raise ConfigError(f"--step-size must be in (0, 1], not {step_size}")
    if step_size is not None and step_size * steps < max(radii) - 1e-9:  # 1e-9: rounding
        # as adversarial training refuses it: PGD would stay near its random start, and the
        # row would report robustness at a radius the attack never explored
        raise ConfigError(
            f"--step-size {step_size:g} x --steps {steps} = {step_size * steps:g} cannot reach "
            f"epsilon {max(radii):g}: raise --step-size or --steps, or leave --step-size out "
            "(2.5 * epsilon / steps at each epsilon)"
        )
    torch.set_num_threads(threads)
    settings = load_settings()
    repo = ModelRepository(repository or settings.model_repository)
    # by default the latest version with torch weights: a compressed one has none to attack
    found = uncompressed_version(repo, name, None) if version is None else repo.get(name, version)
    wrapped = published_pixel_model(found)

    lineage = found.metadata.lineage
    trained_on = str(lineage.get("dataset") or "digits")
    chosen = dataset or trained_on
    refuse_unread_data_dir(lineage, version_ref(found), chosen, data_dir)
    if data_root is not None and (problem := unread_root(lineage, version_ref(found))):
        raise ConfigError(problem)
    if data_root is not None and chosen != trained_on:  # its own shards only, not --dataset's
        raise ConfigError(
            f"--data-root reads the ingested shards {version_ref(found)} was trained on "
            f"({trained_on}); --dataset {chosen} is read from its files: leave --data-root out"
        )
    if chosen == trained_on:  # the same split (and shard selection): no training image
        splits = lineage_splits(lineage, data_dir or settings.data_dir, data_root)
    else:
        splits = load_splits(chosen, data_dir or settings.data_dir)
    expected = tuple(found.config.inputs[0].dims)
    if splits.input_shape != expected:
        raise ConfigError(
            f"dataset {chosen!r} has images of shape {splits.input_shape}, but model {name!r} "
            f"takes {expected}; pick the dataset it was trained on"
        )
    test = splits.test
    count = min(len(test), limit or len(test))
    report = robustness_report(
        wrapped,
        test.images[:count],
        test.labels[:count],
        radii,
        steps=steps,
        step_size=step_size,
        seed=seed,
    )
    result = ModelRobustness(
        model=found.name,
        version=found.version,
        architecture=found.metadata.architecture,
        dataset=chosen,
        split="test",
        report=report.model_dump(),
    )
    if as_json:
        click.echo(result.model_dump_json())
        return
    click.echo(
        f"{found.name} version {found.version} ({found.metadata.architecture}) on the "
        f"{chosen} test split, {report.seconds:.1f} s"
    )
    click.echo(report.table())
    recorded = found.metadata.metrics.get("test_robust_accuracy")
    if recorded is not None:
        click.echo(f"recorded at publish: {lineage.get('robust_accuracy_attack')}: {recorded:.4f}")
