"""`headrace train`: train a registered model on a dataset, export it to ONNX and publish it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from headrace.commands.adversarial_options import adversarial_options, adversarial_settings
from headrace.commands.options import build_config
from headrace.commands.privacy_options import dp_defaults_apply, privacy_options, privacy_settings
from headrace.commands.shard_options import shard_options, shard_settings
from headrace.errors import ConfigError
from headrace.settings import load_settings

if TYPE_CHECKING:  # training loads inside the command, not when the CLI starts
    from training.config import TrainConfig


def _refuse_other_run_folder(
    config: TrainConfig, run_id: str | None, runs_dir: Path | None
) -> None:
    """`ConfigError` when --run-id or --runs-dir, given beside --resume, name another folder
    than the resumed run's: it continues in its own, and they went unread."""
    from training.recipe import run_folder

    if config.resume is None:
        return
    folder = run_folder(config)
    conflicts = []
    if runs_dir is not None and runs_dir.resolve() != folder.parent.resolve():
        conflicts.append(f"--runs-dir {runs_dir} (the run's: {folder.parent})")
    if run_id is not None and f"{config.model_name}-{run_id}" != folder.name:
        conflicts.append(f"--run-id {run_id} (the run's folder: {folder.name})")
    if conflicts:
        raise ConfigError(
            f"--resume continues the run in {folder}; these flags name another run folder: "
            + "; ".join(conflicts)
            + ". Leave them out, or drop --resume to start a new run"
        )


@click.group("train", invoke_without_command=True)
@click.option("--model", default="lenet5", show_default=True, help="Registered architecture.")
@click.option("--dataset", default="digits", show_default=True, help="digits, mnist or cifar10.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Folder of a file-based dataset (default HEADRACE_DATA_DIR).",
)
@shard_options
@click.option("--epochs", type=int, default=50, show_default=True, help="Most epochs to run.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option(
    "--width", type=float, default=1.0, show_default=True, help="Channel multiplier (1 = classic)."
)
@click.option(
    "--dropout",
    type=float,
    default=0.0,
    show_default=True,
    help="Dropout after the hidden layers, in [0, 1).",
)
@click.option("--lr", "learning_rate", type=float, default=1e-3, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option(
    "--lr-schedule",
    type=click.Choice(["plateau", "cosine", "none"]),
    default="plateau",
    show_default=True,
    help="Learning-rate schedule.",
)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for torch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds splits and training.")
@click.option(
    "--patience",
    type=int,
    default=5,
    show_default=True,
    help="Early stopping: epochs without a better val loss (0 = off).",
)
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--normalize/--no-normalize", default=True, show_default=True)
@click.option(
    "--balance",
    type=click.Choice(["none", "sampler", "loss"]),
    default="none",
    show_default=True,
    help="Class balancing by weighted sampler or class-weighted loss.",
)
@adversarial_options
@privacy_options
@click.option(
    "--watermark-key",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Embed the watermark of this key (`headrace watermark keygen`) while training.",
)
@click.option("--name", help="Repository model name (default MODEL-DATASET).")
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    help="Model repository (default HEADRACE_MODEL_REPOSITORY or ./model_repository).",
)
@click.option(
    "--runs-dir", type=click.Path(path_type=Path), help="Checkpoints and TensorBoard logs."
)
@click.option("--run-id", help="Run folder name (default a timestamp).")
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="Continue from a run folder or its checkpoint.pt.",
)
@click.option("--publish/--no-publish", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print only the final report as JSON.")
def train(
    model: str,
    dataset: str,
    data_dir: Path | None,
    from_shards: bool,
    up_to_offset: tuple[str, ...],
    data_root: Path | None,
    epochs: int,
    batch_size: int,
    width: float,
    dropout: float,
    learning_rate: float,
    optimizer: str,
    weight_decay: float,
    lr_schedule: str,
    threads: int,
    seed: int,
    patience: int,
    augment: bool,
    normalize: bool,
    balance: str,
    adversarial: str | None,
    adv_epsilon: float,
    adv_steps: int,
    adv_step_size: float | None,
    adv_clean_fraction: float,
    adv_warmup_epochs: int,
    dp_epsilon: float | None,
    dp_delta: float | None,
    max_grad_norm: float | None,
    watermark_key: Path | None,
    name: str | None,
    repository: Path | None,
    runs_dir: Path | None,
    run_id: str | None,
    resume: Path | None,
    publish: bool,
    as_json: bool,
) -> None:
    """Train MODEL on DATASET, verify its ONNX export and publish it to the model repository.

    With a subcommand (submit, status, events, cancel, agent): training jobs over Kafka on Ray.
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    from training.checkpoint import checkpoint_path
    from training.config import TrainConfig
    from training.datasets import unread_folder
    from training.recipe import default_run_id, run_folder, run_training

    if data_dir is not None and (problem := unread_folder(dataset, "--data-dir")) is not None:
        raise ConfigError(problem)  # HEADRACE_DATA_DIR is a default for every dataset: not it
    if repository is not None and not publish:  # HEADRACE_MODEL_REPOSITORY is not checked
        raise ConfigError(
            f"--repository {repository} is not read with --no-publish: the trained model is "
            "neither exported nor written to any repository; leave --repository out, or drop "
            "--no-publish to publish to it"
        )
    settings = load_settings()
    config = build_config(
        dp_defaults_apply(TrainConfig),  # flags left unset take the DP defaults when private
        model=model,
        dataset=dataset,
        data_dir=data_dir or settings.data_dir,
        data_source=shard_settings(
            from_shards, up_to_offset, data_root, settings.data_root, data_dir
        ),
        epochs=epochs,
        batch_size=batch_size,
        width=width,
        dropout=dropout,
        learning_rate=learning_rate,
        optimizer=optimizer,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule,
        threads=threads,
        seed=seed,
        patience=patience,
        preprocess={"normalize": normalize, "augment": {"enabled": augment}, "balance": balance},
        adversarial=adversarial_settings(
            adversarial,
            adv_epsilon,
            adv_steps,
            adv_step_size,
            adv_clean_fraction,
            adv_warmup_epochs,
        ),
        privacy=privacy_settings(dp_epsilon, dp_delta, max_grad_norm),
        watermark={"key_file": watermark_key} if watermark_key else None,
        name=name,
        publish=publish,
        repository=repository or settings.model_repository,
        runs_dir=runs_dir or settings.runs_dir,
        run_id=run_id or default_run_id(),  # fixed now: a Ctrl-C names the run folder
        resume=resume,
    )
    _refuse_other_run_folder(config, run_id, runs_dir)
    try:
        report = run_training(config)
    except KeyboardInterrupt:
        folder = run_folder(config)
        if checkpoint_path(folder).is_file():
            click.echo(
                f"stopped; the last finished epoch is checkpointed in {folder}: continue with "
                f"`headrace train --resume {folder}` and the same settings",
                err=True,
            )
        raise click.Abort() from None
    if as_json:
        click.echo(report.model_dump_json())
        return
    click.echo(json.dumps(report.model_dump(), indent=2), err=True)
    click.echo(
        f"{report.name}: test accuracy {report.test_accuracy:.4f} "
        f"(balanced {report.test_balanced_accuracy:.4f}) after {report.epochs_run} epochs"
        + (f"; published version {report.version} to {report.repository}" if report.version else "")
    )
