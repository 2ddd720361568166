"""`headrace infer`: send a .npy file to a running server and print what the model answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from headrace.commands.options import FiniteFloatRange, pem_certificates
from headrace.errors import HeadraceError, InvalidInput

if TYPE_CHECKING:  # numpy and serving load inside the command, not when the CLI starts
    import numpy as np

    from serving.model_config import PreprocessingSpec

MAX_TIMEOUT_S = 86_400.0
"""A day; 0, negative, NaN or huge deadlines were all answered 'DEADLINE_EXCEEDED'."""
PIXEL_RANGE = (0, 255)
"""Raw pixels are 8-bit, as every dataset here stores them and the model's scale expects."""


def _value_range(array: np.ndarray) -> tuple[Any, Any]:
    return (array.min(), array.max()) if array.size else PIXEL_RANGE


def as_model_input(
    array: np.ndarray,
    wanted: np.dtype[Any],
    preprocessing: PreprocessingSpec | None,
    what: str,
) -> np.ndarray:
    """`array` as the model input `what` (e.g. "x.npy for input 'input' (FP32)"), or an
    `InvalidInput` saying why it cannot be. Integer arrays are raw pixels: for a float input
    they are preprocessed as the model's config says, which only 8-bit pixels fit; for an
    integer input they are sent as they are when every value fits its datatype. Nothing is
    converted in a way that changes values (no wrapping, no unscaled pixels)."""
    import numpy as np

    if array.dtype.kind in "ui" and wanted.kind == "f":
        if preprocessing is None:
            raise InvalidInput(
                f"{what}: the array holds integers ({array.dtype}), which are read as raw "
                "pixels, but the model's config has no preprocessing to turn them into its "
                "input; save the array as floats, preprocessed as the model was trained"
            )
        low, high = _value_range(array)
        if low < PIXEL_RANGE[0] or high > PIXEL_RANGE[1]:
            raise InvalidInput(
                f"{what}: integer arrays are raw 8-bit pixels, within {PIXEL_RANGE[0]}.."
                f"{PIXEL_RANGE[1]}, and this one holds {low}..{high}; save the pixels as "
                "uint8, or save floats preprocessed as the model was trained"
            )
        array = preprocessing.apply(array)
    if array.dtype == wanted:
        return array
    if array.dtype.kind in "ui" and wanted.kind in "ui":
        info = np.iinfo(wanted)
        low, high = _value_range(array)
        if low < info.min or high > info.max:
            raise InvalidInput(
                f"{what}: the array holds {low}..{high} ({array.dtype}), outside the input's "
                f"range {info.min}..{info.max}"
            )
        return array.astype(wanted)
    if not np.can_cast(array.dtype, wanted, casting="same_kind"):
        raise InvalidInput(f"{what}: the array holds {array.dtype}")
    return array.astype(wanted)


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

    Integer arrays are raw 8-bit pixels (0..255): for a float input they are
    preprocessed as the model's config says (scale, per-channel mean and std)
    before they are sent; an integer input takes them when its datatype holds
    every value. Anything else that would change the values is refused.
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
        meta = client.model_metadata(model, version, timeout_s)
        (spec,) = meta.inputs[:1]
        dims = list(spec.shape)
        if array.ndim == len(dims) - 1:  # one sample: add the batch axis
            array = array[np.newaxis]
        view = client.model_config(model, version, timeout_s)
        what = f"{input_file.name} for input {spec.name!r} ({spec.datatype})"
        array = as_model_input(array, DATATYPE_TO_NUMPY[spec.datatype], view.preprocessing, what)
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
