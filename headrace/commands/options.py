"""Click helpers shared by command modules: config validation errors as one clear message,
a float range that refuses NaN and infinity, a check of PEM certificate files."""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel, ValidationError

from headrace.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_SEED = 2**32 - 1
"""The seeds `headrace train` accepts (TrainConfig.seed); torch refuses those above 2**64 - 1."""
MAX_THREADS = 256
"""TrainConfig.threads' bound; torch.set_num_threads(100_000) crashes the process (SIGSEGV)."""


def build_config(factory: Callable[..., ModelT], **values: Any) -> ModelT:
    """Build a pydantic config, reporting every problem at once as a `ConfigError`."""
    try:
        return factory(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def typed(parameter: str) -> bool:
    """Whether the current command's `parameter` was given on the command line (not left at
    its default)."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(parameter)
    return source == ParameterSource.COMMANDLINE


def refuse_metrics_host_without_port(metrics_port: int | None) -> None:
    """`ConfigError` for --metrics-host without --metrics-port: /metrics is off without a
    port, and the address went unread."""
    if metrics_port is None and typed("metrics_host"):
        raise ConfigError(
            "--metrics-host only applies with --metrics-port: without a port /metrics is "
            "off; add --metrics-port PORT (0 = a free one) or leave --metrics-host out"
        )


def refuse_unread_folder(dataset: str, data_dir: Path | None) -> None:
    """`ConfigError` when --data-dir names a folder `dataset` would not read (it is embedded):
    `produce --data-dir ~/mnist` without --dataset sent digits. HEADRACE_DATA_DIR, a default
    for every dataset, is not checked: pass the flag only."""
    from training.datasets import unread_folder

    if data_dir is not None and (problem := unread_folder(dataset, "--data-dir")) is not None:
        raise ConfigError(problem)


def refuse_unread_data_dir(
    lineage: dict[str, Any], what: str, dataset: str | None, data_dir: Path | None
) -> None:
    """`refuse_unread_folder` for a job on the published version `what`: with a --dataset
    other than the one it was trained on, that dataset's files; with its own, the version's
    (an embedded dataset, or ingested shards read from the data root) -- its `lineage` says."""
    from training.datasets import unread_data_dir

    trained_on = str(lineage.get("dataset") or "digits")
    if dataset is not None and dataset != trained_on:
        refuse_unread_folder(dataset, data_dir)
    elif data_dir is not None and (problem := unread_data_dir(lineage, what)):
        raise ConfigError(problem)


class FiniteFloatRange(click.FloatRange):
    """`click.FloatRange` that also refuses NaN and infinity: NaN passes every range check
    (`nan <= 0` is false), so `--timeout-s nan` got through to a deadline that never came or
    one that had always passed."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number.", param, ctx)
        return number


def pem_certificates(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Click callback: the file holds PEM certificates (a CA to trust). gRPC only failed each
    call, 'Failed to create security handshaker', or 'connection refused' when nothing listened."""
    if value is None:
        return None
    try:
        ssl.create_default_context(cafile=str(value))
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise click.BadParameter(
            f"{value} holds no PEM certificate ({reason}); pass the CA certificate that signed "
            "the server's (a '-----BEGIN CERTIFICATE-----' file)"
        ) from None
    return value
