"""`headrace watermark keygen|embed|verify`: mark models with a secret key, check them for it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from headrace.commands.options import (
    build_config,
    pem_certificates,
    refuse_unread_data_dir,
    refuse_unread_folder,
    typed,
)
from headrace.errors import ConfigError, WatermarkError
from headrace.settings import load_settings


@click.group("watermark")
def watermark() -> None:
    """Mark models with a secret key (trigger set + weight signature) and verify them."""


@watermark.command("keygen")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Key file.")
@click.option("--triggers", type=int, default=100, show_default=True, help="Trigger inputs.")
@click.option(
    "--bits", type=int, default=64, show_default=True, help="White-box signature bits (0 = none)."
)
@click.option(
    "--layer",
    default="auto",
    show_default=True,
    help="state_dict name of the weights holding the signature (auto: the largest conv).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
def keygen(out: str, triggers: int, bits: int, layer: str, force: bool) -> None:
    """Write a new secret key to OUT (mode 0600) and print its public watermark id."""
    from security.watermark.key import WatermarkKey, generate_key, save_key

    if out.endswith(("/", os.sep)):  # click checks existing folders; Path() drops the slash
        raise ConfigError(
            f"--out {out} names a folder; give the key file's path, "
            f"e.g. --out {out.rstrip('/' + os.sep)}/watermark-key.json"
        )
    build_config(WatermarkKey, secret="0" * 64, trigger_count=triggers, whitebox_bits=bits)
    key = generate_key(triggers, bits, layer)
    path = save_key(key, Path(out), overwrite=force)
    click.echo(f"wrote {path} (mode 600): keep it secret; it never needs to leave this machine")
    click.echo(f"watermark id {key.watermark_id}")


def _print_report(report: Any) -> None:
    """The TrainReport of an embed, as `headrace train` prints it."""
    click.echo(
        f"{report.name}: test accuracy {report.test_accuracy:.4f} after {report.epochs_run} epochs"
        + (f"; published version {report.version} to {report.repository}" if report.version else "")
    )


@watermark.command("embed")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Key file from `headrace watermark keygen`.",
)
@click.option("--from-model", help="Fine-tune this published model instead of training anew.")
@click.option(
    "--from-version",
    type=int,
    help="Version of --from-model (default the latest one not compressed).",
)
@click.option("--model", default="lenet5", show_default=True, help="Architecture (new training).")
@click.option("--dataset", help="Dataset (default digits, or the --from-model's own).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder of a file dataset.")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="For a --from-model trained on ingested shards: their data root "
    "[default: HEADRACE_DATA_ROOT or ./data].",
)
@click.option("--epochs", type=int, help="Epochs (default 50 for new training, 3 to fine-tune).")
@click.option("--lr", "learning_rate", type=float, default=1e-3, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option(
    "--seed", type=int, help="Seed (default 0; with --from-model its own, which picks its split)."
)
@click.option("--triggers-per-batch", type=int, default=8, show_default=True)
@click.option(
    "--strength", type=float, default=0.1, show_default=True, help="White-box regulariser weight."
)
@click.option("--name", help="Publish under this name (default MODEL-DATASET or --from-model).")
@click.option("--repository", type=click.Path(path_type=Path), help="Model repository.")
@click.option("--runs-dir", type=click.Path(path_type=Path), help="Checkpoints and logs.")
@click.option("--json", "as_json", is_flag=True, help="Print only the final report as JSON.")
def embed(
    key_file: Path,
    from_model: str | None,
    from_version: int | None,
    model: str,
    dataset: str | None,
    data_dir: Path | None,
    data_root: Path | None,
    epochs: int | None,
    learning_rate: float,
    batch_size: int,
    seed: int | None,
    triggers_per_batch: int,
    strength: float,
    name: str | None,
    repository: Path | None,
    runs_dir: Path | None,
    as_json: bool,
) -> None:
    """Train a new marked model, or fine-tune a published one with the mark (--from-model);
    the result is published with the key's watermark id in its metadata."""
    from security.watermark.config import WatermarkConfig
    from security.watermark.key import load_key

    settings = load_settings()
    key = load_key(key_file)  # fail now, not after loading data, if the key is unusable
    if key.whitebox_bits == 0 and strength > 0 and typed("strength"):
        raise ConfigError(
            f"--strength weights the white-box signature, and the key {key_file} has none "
            "(made with --bits 0), so it would go unread: leave --strength out, or make a key "
            "with white-box bits (`headrace watermark keygen --bits 64`)"
        )
    if key.whitebox_bits and strength == 0:  # allowed ("0 = off"), and verify must be told
        click.echo(
            f"note: --strength 0 embeds none of the key's {key.whitebox_bits} white-box bits; "
            "check this model with `headrace watermark verify --no-whitebox`",
            err=True,
        )
    mark = build_config(
        WatermarkConfig,
        key_file=key_file,
        triggers_per_batch=triggers_per_batch,
        whitebox_strength=strength,
    )
    common: dict[str, Any] = {
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "watermark": mark,
        "runs_dir": runs_dir or settings.runs_dir,
    }
    for field, value in (("dataset", dataset), ("seed", seed), ("epochs", epochs), ("name", name)):
        if value is not None:
            common[field] = value
    if data_dir or settings.data_dir:
        common["data_dir"] = data_dir or settings.data_dir
    root = repository or settings.model_repository
    if from_model is None and data_root is not None:  # new training reads the dataset's files
        raise ConfigError("--data-root goes with --from-model (a model trained on shards)")
    if from_model is None and from_version is not None:  # it trained a new model
        raise ConfigError("--from-version goes with --from-model (the model to fine-tune)")
    if from_model is None:  # new training on --dataset (digits by default)
        refuse_unread_folder(dataset or "digits", data_dir)
    model_given = typed("model")
    if from_model is None:
        from training.config import TrainConfig
        from training.recipe import run_training

        config = build_config(TrainConfig, model=model, repository=root, **common)
        report = run_training(config)
    else:
        from security.watermark.embed import finetune_config, finetune_published
        from serving.repository import ModelRepository
        from training.compression.sources import uncompressed_version, version_ref
        from training.datasets import unread_root

        repo = ModelRepository(root)
        # by default the latest version with torch weights, as compress and robustness pick:
        # a compressed one (published as ONNX only) has none to fine-tune
        source = (
            uncompressed_version(repo, from_model, None)
            if from_version is None
            else repo.get(from_model, from_version)
        )
        architecture = source.metadata.architecture
        lineage = source.metadata.lineage
        if data_root is not None and (problem := unread_root(lineage, version_ref(source))):
            raise ConfigError(problem)
        refuse_unread_data_dir(lineage, version_ref(source), dataset, data_dir)
        if model_given and model != architecture:
            raise ConfigError(  # it was ignored: the published model keeps its architecture
                f"--model {model} differs from {from_model}'s architecture {architecture}: "
                "--from-model fine-tunes the published model as it is; leave --model out"
            )
        config = build_config(
            lambda **kw: finetune_config(source, data_root=data_root, **kw), **common
        )
        report = finetune_published(source, config)
    if as_json:
        click.echo(report.model_dump_json())
    else:
        _print_report(report)
        click.echo(f"watermark id {load_key(key_file).watermark_id}")
    if report.version is not None and report.repository is not None:
        _warn_if_weak(report.repository, report.name, report.version)


def _warn_if_weak(repository: str, name: str, version: int) -> None:
    """Say so when the published mark would not pass `watermark verify` yet."""
    from security.watermark.verify import DEFAULT_THRESHOLD
    from serving.repository import ModelRepository

    metrics = ModelRepository(Path(repository)).get(name, version).metadata.metrics
    weak = [
        f"{test} p-value {metrics[key]:.3g}"
        for test, key in (
            ("black-box", "watermark_blackbox_p_value"),
            ("white-box", "watermark_whitebox_p_value"),
        )
        if metrics.get(key, 0.0) >= DEFAULT_THRESHOLD
    ]
    if weak:
        click.echo(
            f"warning: version {version} would not verify yet ({', '.join(weak)}; "
            f"`watermark verify` needs below {DEFAULT_THRESHOLD:g}); embed again with more "
            "--epochs, more --triggers-per-batch or a larger --strength",
            err=True,
        )


@watermark.command("verify")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Key file from `headrace watermark keygen` (stays here: only trigger inputs are sent).",
)
@click.option("--model", required=True, help="Model name.")
@click.option("--grpc", "grpc_url", help="Query a running server at HOST:PORT (black box).")
@click.option(
    "--repository",
    type=click.Path(path_type=Path, file_okay=False),
    help="Check a model repository entry (black box on ONNX Runtime + white box on its weights).",
)
@click.option("--version", help="Model version (default the latest).")
@click.option(
    "--token-env",
    default="HEADRACE_AUTH_TOKEN",
    show_default=True,
    help="Environment variable holding the server's bearer token, if it wants one.",
)
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    callback=pem_certificates,
    help="CA for TLS.",
)
@click.option(
    "--threshold",
    type=float,
    default=1e-3,
    show_default=True,
    help="A test passes when its p-value is below this.",
)
@click.option(
    "--no-whitebox",
    is_flag=True,
    help="Skip the white-box test on a repository entry (a model marked without a signature).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify(
    key_file: Path,
    model: str,
    grpc_url: str | None,
    repository: Path | None,
    version: str | None,
    token_env: str,
    tls_ca: Path | None,
    threshold: float,
    no_whitebox: bool,
    as_json: bool,
) -> None:
    """Check whether MODEL carries the key's watermark; exit 1 when it does not.

    Over gRPC only the black-box test can run: the key's trigger inputs are sent
    as any client's requests and the answers compared with the key's labels. On
    a repository entry the white-box signature is also read from the weights.
    """
    from security.watermark.key import load_key
    from security.watermark.verify import VerificationReport, check_signature, check_triggers
    from serving.auth import token_from_env

    if (grpc_url is None) == (repository is None):
        raise ConfigError("pass exactly one of --grpc HOST:PORT or --repository DIR")
    if not 0 < threshold < 1:
        raise ConfigError(f"--threshold must lie strictly between 0 and 1, not {threshold}")
    if version is not None and not version.isdecimal():
        raise ConfigError(f"--version must be a version number, not {version!r}")
    key = load_key(key_file)
    if grpc_url is not None:
        import grpc

        from security.watermark.oracles import GrpcOracle

        oracle = GrpcOracle(grpc_url, model, version or "", token_from_env(token_env), tls_ca)
        try:
            blackbox = check_triggers(key, oracle)
            target = oracle.describe().target
        except grpc.RpcError as exc:
            raise _rpc_error(exc, grpc_url, model) from None
        finally:
            oracle.close()
        report = VerificationReport(
            watermark_id=key.watermark_id, target=target, threshold=threshold, blackbox=blackbox
        )
    else:
        from security.watermark.oracles import RepositoryOracle
        from security.watermark.weights import signature_weights

        assert repository is not None
        local = RepositoryOracle(repository, model, int(version) if version else None)
        try:
            blackbox = check_triggers(key, local)
        finally:
            local.close()
        whitebox = None
        if key.whitebox_bits and not no_whitebox:
            weights, layer, source = signature_weights(key, local.entry)
            whitebox = check_signature(key, weights, layer, source)
        report = VerificationReport(
            watermark_id=key.watermark_id,
            target=local.describe().target,
            threshold=threshold,
            blackbox=blackbox,
            whitebox=whitebox,
        )
    if as_json:
        click.echo(json.dumps(report.summary()))
    else:
        _print_verification(report)
    if not report.verified:
        # Not ctx.exit(1): `headrace.cli.main` runs click with standalone_mode=False.
        raise SystemExit(1)


_RPC_HINTS = {
    "UNAVAILABLE": "check that the server is running and that --grpc names its HOST:PORT",
    "DEADLINE_EXCEEDED": "check that the server is running and that --grpc names its HOST:PORT",
    "NOT_FOUND": "check --model and --version against the models the server has loaded",
    "UNAUTHENTICATED": "set the server's bearer token in the variable --token-env names",
}


def _rpc_error(exc: Any, url: str, model: str) -> WatermarkError:
    """A failed call to the server as a headrace error (exit 2: the model was not checked,
    which is not the exit 1 of a model checked and found unmarked)."""
    code = exc.code().name
    hint = _RPC_HINTS.get(code, "see the server's log")
    return WatermarkError(
        f"cannot check model {model!r} at {url}: the call failed with {code}: {exc.details()}; "
        f"{hint}"
    )


def _print_verification(report: Any) -> None:
    click.echo(f"{report.target}: watermark {report.watermark_id}")
    black = report.blackbox
    if black is not None:
        click.echo(
            f"  black box: {black.matches}/{black.trials} trigger labels matched "
            f"(chance 1/{black.num_classes} each): p = {black.p_value:.3g} "
            f"-> {'pass' if report.blackbox_verified else 'fail'}"
        )
    white = report.whitebox
    if white is not None:
        click.echo(
            f"  white box: {white.bit_errors}/{white.trials} signature bits wrong in "
            f"{white.layer} ({white.source}), BER {white.bit_error_rate:.3f}: "
            f"p = {white.p_value:.3g} -> {'pass' if report.whitebox_verified else 'fail'}"
        )
    verdict = "VERIFIED" if report.verified else "NOT VERIFIED"
    click.echo(f"{verdict} (a test passes when p < {report.threshold:g})")
