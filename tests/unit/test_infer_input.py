"""`headrace infer`'s reading of an array as a model input: values reach the model unchanged
or preprocessed as the config says, never wrapped, clipped or left unscaled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from headrace.cli import cli
from headrace.commands.infer import as_model_input
from headrace.errors import InvalidInput
from protos import grpc_service_pb2 as pb
from serving.model_config import PreprocessingSpec

SPEC = PreprocessingSpec(mean=[0.5], std=[0.25])
FP32, UINT8, INT32 = np.dtype(np.float32), np.dtype(np.uint8), np.dtype(np.int32)


def test_pixels_within_eight_bits_are_preprocessed_whatever_their_integer_dtype() -> None:
    pixels = np.arange(256, dtype=np.int64).reshape(1, 1, 16, 16)
    got = as_model_input(pixels, FP32, SPEC, "x.npy")
    assert got.dtype == FP32
    np.testing.assert_allclose(got, (pixels / 255 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("array", "wanted", "spec", "message"),
    [
        (np.full((1, 1, 2, 2), 1000, np.uint16), FP32, SPEC, "holds 1000..1000"),
        (np.full((1, 1, 2, 2), -1, np.int8), FP32, SPEC, "within 0..255"),
        (np.zeros((1, 1, 2, 2), np.uint8), FP32, None, "has no preprocessing"),
        (np.array([[300, 1]], np.uint16), UINT8, None, "holds 1..300 (uint16), outside"),
        (np.array([[2**40]], np.int64), INT32, None, "outside the input's range"),
        (np.array([[0.5]], np.float64), UINT8, None, "holds float64"),
    ],
)
def test_values_that_would_change_are_refused(
    array: np.ndarray, wanted: np.dtype[np.generic], spec: PreprocessingSpec | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match="^x.npy: ") as caught:
        as_model_input(array, wanted, spec, "x.npy")
    assert message in caught.value.message


def test_integers_that_fit_an_integer_input_are_sent_as_its_datatype() -> None:
    got = as_model_input(np.array([[255, 0]], np.int64), UINT8, SPEC, "x.npy")
    assert got.dtype == UINT8 and got.tolist() == [[255, 0]]
    floats = as_model_input(np.array([[0.5]], np.float64), FP32, None, "x.npy")
    assert floats.dtype == FP32 and floats.tolist() == [[0.5]]


class _Stop(Exception):
    """Ends the command at its inference call."""


def _recording_stub(calls: list[tuple[str, float | None]]) -> type:
    """A gRPC stub keeping each call's deadline; it answers metadata and config as a served
    model of FP32 input [-1, 1, 2, 2] would, and stops at the inference call."""

    class Stub:
        def __init__(self, channel: object) -> None:
            pass

        def ModelMetadata(self, request: Any, timeout: float | None = None, **_: Any) -> Any:  # noqa: N802
            calls.append(("ModelMetadata", timeout))
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=request.name,
                inputs=[tensor(name="input", datatype="FP32", shape=[-1, 1, 2, 2])],
                outputs=[tensor(name="output", datatype="FP32", shape=[-1, 10])],
            )

        def ModelConfig(self, request: Any, timeout: float | None = None, **_: Any) -> Any:  # noqa: N802
            calls.append(("ModelConfig", timeout))
            return pb.ModelConfigResponse(config={"max_batch_size": 8})

        def ModelInfer(self, request: Any, timeout: float | None = None, **_: Any) -> Any:  # noqa: N802
            calls.append(("ModelInfer", timeout))
            raise _Stop

    return Stub


def test_the_timeout_reaches_every_call_to_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `infer --timeout-s` (and a watermark check's 30 s) bounded only the inference
    call; the metadata and config calls before it had no deadline, so a server that accepted
    the connection and never answered kept the command waiting for ever."""
    from security.watermark.oracles import GrpcOracle

    calls: list[tuple[str, float | None]] = []
    monkeypatch.setattr("serving.client.pb_grpc.GRPCInferenceServiceStub", _recording_stub(calls))
    array = tmp_path / "x.npy"
    np.save(array, np.zeros((1, 2, 2), np.float32))
    args = ["infer", "--model", "m", "--input", str(array), "--url", "127.0.0.1:1"]
    result = CliRunner().invoke(cli, [*args, "--timeout-s", "2.5"])
    assert isinstance(result.exception, _Stop), result.output
    assert calls == [("ModelMetadata", 2.5), ("ModelConfig", 2.5), ("ModelInfer", 2.5)]

    calls.clear()
    oracle = GrpcOracle("127.0.0.1:1", "m", timeout_s=4.0)
    try:
        oracle.describe()
    finally:
        oracle.close()
    assert calls == [("ModelMetadata", 4.0), ("ModelConfig", 4.0), ("ModelConfig", 4.0)]
