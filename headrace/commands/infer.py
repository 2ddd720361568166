"""`headrace infer`: send a .npy file to a running server and print what the model answers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from headrace.commands.options import FiniteFloatRange, pem_certificates
from headrace.errors import HeadraceError, InvalidInput

MAX_TIMEOUT_S = 86_400.0
"""A day; 0, negative, NaN or huge deadlines were all answered 'DEADLINE_EXCEEDED'."""


@click.command("infer")
@click.option("--model", required=True, help="Model name in the server's repository.")
@click.option(
    "--input",
    "input_file",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A .npy array: one sample (the model's dims) or a batch (a leading batch axis).",
)
@click.option("--url", default="127.0.0.1:8001", show_default=True, help="Server gRPC address.")
@click.option("--version", default="", help="Model version (default: the latest ready one).")
@click.option(
    "--timeout-s",
    type=FiniteFloatRange(min=0, min_open=True, max=MAX_TIMEOUT_S),
    default=30.0,
    show_default=True,
    help="Deadline of each call to the server.",
)
@click.option(
    "--token-env",
    default="HEADRACE_AUTH_TOKEN",
    show_default=True,
    help="Environment variable holding the bearer token, if the server wants one.",
)
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    callback=pem_certificates,
    help="CA for TLS.",
)
@click.option("--json", "as_json", is_flag=True, help="Print outputs as one JSON object.")
def infer(
    model: str,
    input_file: Path,
    url: str,
    version: str,
    timeout_s: float,
    token_env: str,
    tls_ca: Path | None,
    as_json: bool,
) -> None:
    """Run MODEL on the array in --input through the gRPC server at --url.

    Integer arrays (raw pixels) are preprocessed as the model's config says
    (scale, per-channel mean and std) before they are sent.
    """
    import grpc
    import numpy as np

    from serving.auth import token_from_env
    from serving.client import InferenceClient
    from serving.types import DATATYPE_TO_NUMPY

    try:
        array = np.load(input_file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(
            f"{input_file} is not a numeric .npy array ({exc}); save one with numpy.save"
        ) from None
    client = InferenceClient(url, token_from_env(token_env), tls_ca)
    try:
        meta = client.model_metadata(model, version)
        (spec,) = meta.inputs[:1]
        dims = list(spec.shape)
        if array.ndim == len(dims) - 1:  # one sample: add the batch axis
            array = array[np.newaxis]
        wanted = DATATYPE_TO_NUMPY[spec.datatype]
        view = client.model_config(model, version)
        if array.dtype.kind in "ui" and wanted.kind == "f" and view.preprocessing is not None:
            array = view.preprocessing.apply(array)  # raw pixels
        if array.dtype != wanted:
            if not np.can_cast(array.dtype, wanted, casting="same_kind"):
                raise InvalidInput(
                    f"{input_file.name} holds {array.dtype}; "
                    f"input {spec.name!r} wants {spec.datatype}"
                )
            array = array.astype(wanted)
        result = client.infer(model, {spec.name: array}, version, timeout_s)
    except grpc.RpcError as exc:  # exit 2 like every other error, not 1
        raise HeadraceError(f"{exc.code().name}: {exc.details()}") from None
    finally:
        client.close()
    if as_json:
        outputs = {name: value.tolist() for name, value in result.outputs.items()}
        click.echo(
            json.dumps({"model": model, "version": result.model_version, "outputs": outputs})
        )
        return
    for name, value in result.outputs.items():
        click.echo(f"{name} (model {model} version {result.model_version}, shape {value.shape}):")
        for row, scores in enumerate(value.reshape(value.shape[0], -1)):
            best = int(np.argmax(scores))
            label = f" = {view.labels[best]!r}" if best < len(view.labels) else ""
            click.echo(f"  row {row}: argmax {best}{label} (score {float(scores[best]):.4f})")
