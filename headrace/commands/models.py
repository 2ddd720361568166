"""`headrace models`: list and inspect the versions in a model repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from headrace.errors import RepositoryError
from headrace.settings import load_settings
from serving.repository import ModelRepository, ModelVersion

KEY_METRICS = ("test_accuracy", "val_accuracy", "accuracy", "test_loss")
"""Metrics shown in `models list`, in this order; without any of them, the first two by name."""

_repository_option = click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Model repository folder. [default: HEADRACE_MODEL_REPOSITORY or ./model_repository]",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def _repository(path: Path | None) -> ModelRepository:
    return ModelRepository(path if path is not None else load_settings().model_repository)


def _key_metrics(metrics: dict[str, float]) -> dict[str, float]:
    keys = [k for k in KEY_METRICS if k in metrics] or sorted(metrics)[:2]
    return {k: metrics[k] for k in keys}


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _created_at(version: ModelVersion) -> str:
    return version.metadata.created_at.strftime("%Y-%m-%d %H:%M:%SZ")


def _architecture(name: str, options: dict[str, float]) -> str:
    """`lenet5 (width 1.5, dropout 0.2)`: the options a version's layers were built with."""
    shown = ", ".join(f"{key} {value:g}" for key, value in sorted(options.items(), reverse=True))
    return f"{name} ({shown})" if shown else name


def _floats(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


@click.group()
def models() -> None:
    """List and inspect the published models and their versions."""


@models.command("list")
@_repository_option
@_json_option
def list_models(repository: Path | None, as_json: bool) -> None:
    """List every model with its versions, latest version, architecture and key metrics."""
    repo = _repository(repository)
    names = repo.list_models()
    if not names:
        if as_json:
            click.echo("[]")
        click.echo(f"no models in {repo.root}; train one with `headrace train ...`", err=as_json)
        return
    entries: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    for name in names:
        versions = repo.versions(name)
        try:
            latest = repo.get(name, versions[-1])
        except RepositoryError as exc:  # one broken model must not hide the others
            entries.append({"name": name, "versions": versions, "error": exc.message})
            rows.append([name, str(len(versions)), str(versions[-1]), "?", "?", "unreadable"])
            click.echo(f"warning: {exc.message}", err=True)
            continue
        metrics = _key_metrics(latest.metadata.metrics)
        entries.append(
            {
                "name": name,
                "versions": versions,
                "latest": latest.version,
                "architecture": latest.metadata.architecture,
                "created_at": latest.metadata.created_at.isoformat(),
                "metrics": _as_json(latest.metadata)["metrics"],
            }
        )
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        rows.append(
            [name, str(len(versions)), str(latest.version), latest.metadata.architecture,
             _created_at(latest), shown]
        )  # fmt: skip
    if as_json:
        click.echo(json.dumps(entries, indent=2))
    else:
        header = ["MODEL", "VERSIONS", "LATEST", "ARCHITECTURE", "CREATED_AT", "METRICS"]
        click.echo(_table(header, rows))


def _as_json(model: BaseModel) -> dict[str, Any]:
    """The model as JSON values; a non-finite number edited into a file becomes null (as
    pydantic writes it), where `json.dumps` would print NaN, which is not JSON."""
    return dict(json.loads(model.model_dump_json()))


@models.command("show")
@click.argument("name")
@click.option(
    "--version", "version", type=click.IntRange(min=1), default=None,
    help="Version number to show. [default: the latest]",
)  # fmt: skip
@_repository_option
@_json_option
def show(name: str, version: int | None, repository: Path | None, as_json: bool) -> None:
    """Show the config and metadata of one version of model NAME (the latest by default)."""
    repo = _repository(repository)
    found = repo.get(name, version)
    if as_json:
        doc = {
            "name": found.name,
            "version": found.version,
            "versions": repo.versions(name),
            "path": str(found.path),
            "config": _as_json(found.config),
            "metadata": _as_json(found.metadata),
        }
        click.echo(json.dumps(doc, indent=2))
        return
    meta, config = found.metadata, found.config
    batching = config.dynamic_batching
    rows: list[tuple[str, object]] = [
        ("model", found.name),
        ("version", f"{found.version} (versions: {', '.join(map(str, repo.versions(name)))})"),
        ("path", found.path),
        ("architecture", _architecture(meta.architecture, meta.architecture_options)),
        ("created_at", _created_at(found)),
        *(("metric", f"{k} = {v:.6g}") for k, v in sorted(meta.metrics.items())),
        *(("lineage", f"{k} = {v}") for k, v in sorted(meta.lineage.items())),
    ]
    if meta.dp_epsilon is not None:
        rows.append(("dp", f"epsilon={meta.dp_epsilon:.4g} delta={meta.dp_delta}"))
    if meta.watermark_id is not None:
        rows.append(("watermark_id", meta.watermark_id))
    rows += [("file", f"{f} sha256={digest}") for f, digest in sorted(meta.sha256.items())]
    rows += [("input", f"{t.name} {t.datatype} {t.dims}") for t in config.inputs]
    if config.preprocessing is not None:  # this version's own (each keeps what it trained with)
        spec = config.preprocessing
        rows.append(
            ("preprocessing", f"scale={spec.scale:.6g} mean={_floats(spec.mean)} "
             f"std={_floats(spec.std)} layout={spec.layout}")
        )  # fmt: skip
    rows += [("output", f"{t.name} {t.datatype} {t.dims}") for t in config.outputs]
    if config.max_batch_size > 0:
        how = f"max_queue_delay_us={batching.max_queue_delay_us}"
        if batching.preferred_batch_sizes:
            how += f" preferred_batch_sizes={batching.preferred_batch_sizes}"
    else:
        how = "none (no batch axis: each request runs alone)"
    rows += [
        ("max_batch_size", config.max_batch_size),
        ("batching", f"{how} max_queue_size={batching.max_queue_size}"),
        ("instances", config.instance_count),
    ]
    if config.labels:
        rows.append(("labels", ", ".join(config.labels)))
    click.echo("\n".join(f"{label + ':':<16}{value}" for label, value in rows))
