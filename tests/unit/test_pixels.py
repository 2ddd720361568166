"""`streams.pixels`: a batch's integer pixels converted together, each request keeping its rows."""

from __future__ import annotations

import numpy as np
import pytest

from headrace.errors import InvalidInput, ModelNotFound
from serving.model_config import ModelConfig, PreprocessingSpec, TensorSpec
from serving.types import InferRequest, InferTensor
from streams.pixels import PixelInput, convert, pixel_inputs

SPEC = PreprocessingSpec(scale=0.5, mean=[1.0], std=[2.0])
CONFIG = ModelConfig(
    name="m",
    max_batch_size=8,
    inputs=[TensorSpec(name="input", datatype="FP32", dims=[1, -1, -1])],
    outputs=[TensorSpec(name="out", dims=[1])],
    preprocessing=SPEC,
)


class Configs:
    def __init__(self, config: ModelConfig = CONFIG) -> None:
        self.config = config

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        if name != self.config.name:
            raise ModelNotFound(f"model {name!r} not found")
        return self.config


def pixel_request(pixels: np.ndarray, model: str = "m") -> InferRequest:
    return InferRequest(model, [InferTensor.from_array("input", pixels)])


def expected(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.float32) * 0.5 - 1.0) / 2.0).astype(np.float32)


def test_requests_of_one_shape_are_converted_together_and_keep_their_own_rows() -> None:
    rng = np.random.default_rng(0)
    shapes = [(1, 1, 2, 2), (3, 1, 2, 2), (1, 1, 3, 3), (2, 1, 2, 2)]
    originals = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    requests = [pixel_request(p) for p in originals]
    found = [item for r in requests for item in pixel_inputs(r, Configs())]
    assert [item.pixels.shape for item in found] == shapes
    assert convert(found) == []
    for request, pixels in zip(requests, originals, strict=True):
        [tensor] = request.inputs
        assert tensor.datatype == "FP32" and tensor.shape == pixels.shape
        np.testing.assert_allclose(tensor.data.reshape(tensor.shape), expected(pixels), rtol=1e-6)


def test_inputs_that_need_no_conversion_are_not_returned() -> None:
    floats = pixel_request(np.zeros((1, 1, 2, 2), np.float32))
    unknown = pixel_request(np.zeros((1, 1, 2, 2), np.uint8), model="other")
    no_spec = Configs(CONFIG.model_copy(update={"preprocessing": None}))
    pixels = pixel_request(np.zeros((1, 1, 2, 2), np.uint8))
    assert pixel_inputs(floats, Configs()) == []
    assert pixel_inputs(unknown, Configs()) == []  # the dataplane reports the unknown model
    assert pixel_inputs(pixels, no_spec) == []


def test_pixels_that_are_not_nchw_with_the_specs_channels_are_refused() -> None:
    flat = pixel_request(np.zeros((1, 4), np.uint8))
    three_channels = pixel_request(np.zeros((1, 3, 2, 2), np.uint8))
    for bad in (flat, three_channels):
        with pytest.raises(InvalidInput, match=r"pixels must be \[batch, 1, H, W\]"):
            pixel_inputs(bad, Configs())


class PickySpec(PreprocessingSpec):
    """Fails on any batch that holds a 255."""

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        if (pixels == 255).any():
            raise ValueError("255 is not allowed here")
        return super().apply(pixels)


def test_a_failing_conversion_is_pinned_on_its_own_input_only() -> None:
    spec = PickySpec(scale=0.5, mean=[1.0], std=[2.0])
    good, bad, also_good = (np.full((1, 1, 2, 2), v, np.uint8) for v in (3, 255, 7))
    requests = [pixel_request(p) for p in (good, bad, also_good)]
    items = [PixelInput(r, 0, r.inputs[0].data.reshape(r.inputs[0].shape), spec) for r in requests]
    failed = convert(items)
    assert [(item.request, str(exc)) for item, exc in failed] == [
        (requests[1], "255 is not allowed here")
    ]
    assert requests[1].inputs[0].datatype == "UINT8"  # left as it was
    for request, pixels in ((requests[0], good), (requests[2], also_good)):
        tensor = request.inputs[0]
        np.testing.assert_allclose(tensor.data.reshape(tensor.shape), expected(pixels))
