"""`headrace compress`: prune, distil and quantize a published model; `compress report NAME`."""

from __future__ import annotations

from pathlib import Path

import click

from headrace.commands.options import build_config, typed
from headrace.errors import ConfigError
from headrace.settings import load_settings

_NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "temperature": ("--temperature", ("distill_from",)),
    "alpha": ("--alpha", ("distill_from",)),
    "epochs": ("--epochs", ("prune", "distill_from")),
    "learning_rate": ("--lr", ("prune", "distill_from")),
    "qat_epochs": ("--qat-epochs", ("quant",)),
    "qat_learning_rate": ("--qat-lr", ("quant",)),
    "weights_only": ("--weights-only", ("quant",)),
}
"""Parameter -> (its flag, the methods of which one must be chosen for it to be read)."""
_METHOD_FLAGS = {"prune": "--prune", "distill_from": "--distill-from", "quant": "--quant"}


def refuse_unread_flags(ctx: click.Context) -> None:
    """`ConfigError` naming every flag typed for a method not chosen: `compress --quant int8
    --epochs 20` ran the 5 QAT epochs (--qat-epochs), the 20 unread."""
    if all(ctx.params[method] is None for method in _METHOD_FLAGS):
        return  # no method at all: the config says what to pass
    unread = []
    for parameter, (flag, methods) in _NEEDS.items():
        if typed(parameter) and all(ctx.params[method] is None for method in methods):
            needs = " or ".join(_METHOD_FLAGS[method] for method in methods)
            unread.append(f"{flag} (only read with {needs})")
    if unread:
        raise ConfigError(
            "these flags are not read by the compression asked for: " + "; ".join(unread)
        )


@click.group("compress", invoke_without_command=True)
@click.option("--model", "source", help="Published model to compress (NAME).")
@click.option(
    "--from-version", type=int, help="Version to start from (default: the latest uncompressed)."
)
@click.option("--prune", type=click.Choice(["l1", "l2"]), help="Remove channels by weight norm.")
@click.option("--sparsity", type=float, help="Fraction of channels to remove (default 0.5).")
@click.option(
    "--quant",
    type=click.Choice(["int8", "int4"]),
    help="Quantization-aware training; weights stored as int8 or packed int4 in the ONNX file.",
)
@click.option("--weights-only", is_flag=True, help="Quantize weights only, not layer inputs.")
@click.option("--distill-from", help="Teacher for knowledge distillation: NAME or NAME:VERSION.")
@click.option("--temperature", type=float, default=4.0, show_default=True)
@click.option("--alpha", type=float, default=0.7, show_default=True, help="Distillation weight.")
@click.option(
    "--epochs", type=int, default=10, show_default=True, help="Fine-tuning epochs (prune/distil)."
)
@click.option("--qat-epochs", type=int, default=5, show_default=True, help="QAT epochs.")
@click.option(
    "--lr", "learning_rate", type=float, default=5e-4, show_default=True, help="Fine-tuning rate."
)
@click.option("--qat-lr", "qat_learning_rate", type=float, default=1e-4, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option(
    "--seed", type=int, help="Seed: the source model's own, which picks its split (the default)."
)
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder of a file-based dataset.")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="For a model trained on ingested shards: their data root "
    "[default: HEADRACE_DATA_ROOT or ./data].",
)
@click.option("--name", help="Publish under this name (default the source model's name).")
@click.option("--repository", type=click.Path(path_type=Path), help="Model repository.")
@click.option("--runs-dir", type=click.Path(path_type=Path), help="Checkpoints and logs.")
@click.option(
    "--latency-seconds", type=float, default=0.5, show_default=True, help="Timing per batch size."
)
@click.option("--publish/--no-publish", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print only the final report as JSON.")
def compress(
    source: str | None,
    from_version: int | None,
    prune: str | None,
    sparsity: float | None,
    quant: str | None,
    weights_only: bool,
    distill_from: str | None,
    temperature: float,
    alpha: float,
    epochs: int,
    qat_epochs: int,
    learning_rate: float,
    qat_learning_rate: float,
    batch_size: int,
    seed: int | None,
    data_dir: Path | None,
    data_root: Path | None,
    name: str | None,
    repository: Path | None,
    runs_dir: Path | None,
    latency_seconds: float,
    publish: bool,
    as_json: bool,
) -> None:
    """Compress a published model: prune channels, distil from a teacher, quantize (QAT).

    The result is exported to ONNX (int8/int4 weights after --quant), checked on
    ONNX Runtime, measured (test accuracy, size, latency at batch 1 and 64) and
    published as a new version of the model (or of --name). With `report NAME`:
    the original against each compressed version.
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    if source is None:
        raise ConfigError("pass --model NAME: the published model to compress")
    source_name, sep, number = source.partition(":")
    if sep and number.isdecimal():  # NAME:VERSION, as --distill-from takes it
        raise ConfigError(
            f"--model takes a model name, not {source!r}: for version {number} of "
            f"{source_name} pass --model {source_name} --from-version {number}"
        )
    from training.compression.config import CompressConfig
    from training.compression.recipe import compress_published

    refuse_unread_flags(click.get_current_context())

    settings = load_settings()
    config = build_config(
        CompressConfig,
        source=source,
        source_version=from_version,
        prune=prune,
        sparsity=sparsity,
        quant=quant,
        quantize_activations=not weights_only,
        distill_from=distill_from,
        temperature=temperature,
        alpha=alpha,
        epochs=epochs,
        qat_epochs=qat_epochs,
        learning_rate=learning_rate,
        qat_learning_rate=qat_learning_rate,
        batch_size=batch_size,
        seed=seed,
        data_dir=data_dir,  # None: the recipe reads HEADRACE_DATA_DIR, a default not checked
        data_root=data_root,
        name=name,
        repository=repository or settings.model_repository,
        runs_dir=runs_dir or settings.runs_dir,
        latency_seconds=latency_seconds,
        publish=publish,
    )
    report = compress_published(config, on_note=lambda note: click.echo(note, err=True))
    if as_json:
        click.echo(report.model_dump_json())
        return
    lat = " ".join(
        f"b{b} {report.latency_s[b] * 1e3:.3f} ms (source {report.source_latency_s[b] * 1e3:.3f})"
        for b in sorted(report.latency_s)
    )
    click.echo(
        f"{report.name} ({report.compression} from {report.source}): test accuracy "
        f"{report.test_accuracy:.2%} (source {report.source_test_accuracy:.2%}) on "
        f"{report.test_samples} images; {report.model_bytes / 1024:.1f} KiB "
        f"({report.size_ratio:.3f} of the source); {report.parameters:,} parameters "
        f"({report.parameter_ratio:.3f}); ONNX Runtime latency {lat}"
        + (f"; published version {report.version} to {report.repository}" if report.version else "")
    )


@compress.command("report")
@click.argument("name")
@click.option("--repository", type=click.Path(path_type=Path), help="Model repository.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder of a file-based dataset.")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="For a model trained on ingested shards: their data root "
    "[default: HEADRACE_DATA_ROOT or ./data].",
)
@click.option(
    "--latency-seconds", type=float, default=0.3, show_default=True, help="Timing per batch size."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report(
    name: str,
    repository: Path | None,
    data_dir: Path | None,
    data_root: Path | None,
    latency_seconds: float,
    as_json: bool,
) -> None:
    """The original NAME against each compressed version: accuracy, size, latency (b1, b64)."""
    from serving.repository import ModelRepository
    from training.compression.report import build_report, format_report, unread_data_flags

    if not latency_seconds > 0:
        raise ConfigError(f"--latency-seconds must be > 0, got {latency_seconds}")
    settings = load_settings()
    repo = ModelRepository(repository or settings.model_repository)
    repo.require_folder()  # else a mistyped --repository said 'no models are published yet'
    # the flags only: HEADRACE_DATA_DIR and HEADRACE_DATA_ROOT are defaults for every model
    if problems := unread_data_flags(repo, name, data_dir, data_root):
        raise ConfigError("; ".join(problems))
    found = build_report(
        repo,
        name,
        data_dir or settings.data_dir,
        latency_seconds,
        data_root,
    )
    click.echo(found.model_dump_json() if as_json else format_report(found))
