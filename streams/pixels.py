"""Integer pixels -> FP32 model input for a taken batch, one numpy pass per model and shape.

A request whose model's config has a `preprocessing` spec may send integer pixels
(NCHW) for an FP32 input; `pixel_inputs` finds and checks them, and `convert`
turns them into the spec's FP32 values. The inputs that share a spec, a dtype
and a per-sample shape are converted together and each request keeps a view of
its own rows, so a batch of records costs one conversion instead of one per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from headrace.errors import HeadraceError, InvalidInput
from serving.model_config import ModelConfig, PreprocessingSpec
from serving.types import InferRequest, InferTensor


class ConfigSource(Protocol):
    """Where the models' configs come from (`serving.dataplane.DataPlane`)."""

    def model_config(self, name: str, version: str = "") -> ModelConfig: ...


class PixelInput(NamedTuple):  # a tuple: one is made per record
    """One integer input of a request that its model's preprocessing spec applies to."""

    request: InferRequest
    position: int  # in request.inputs
    pixels: np.ndarray  # NCHW
    spec: PreprocessingSpec


def pixel_inputs(request: InferRequest, models: ConfigSource) -> list[PixelInput]:
    """The inputs of `request` to convert; `InvalidInput` if one is not NCHW with the spec's
    channels. Empty for a model without a spec, or an unknown one (the dataplane reports it)."""
    integer = [p for p, tensor in enumerate(request.inputs) if tensor.data.dtype.kind in "iu"]
    if not integer:
        return []
    try:
        config = models.model_config(request.model_name, request.model_version)
    except HeadraceError:
        return []
    spec = config.preprocessing
    if spec is None:
        return []
    found = []
    for position in integer:
        tensor = request.inputs[position]
        if not any(s.name == tensor.name and s.datatype == "FP32" for s in config.inputs):
            continue
        pixels = tensor.data
        if pixels.shape != tensor.shape:
            pixels = pixels.reshape(tensor.shape)
        if pixels.ndim != 4 or pixels.shape[1] != len(spec.mean):
            raise InvalidInput(
                f"input {tensor.name!r}: pixels must be [batch, {len(spec.mean)}, H, W] "
                f"(NCHW) to be preprocessed, got {list(tensor.shape)}"
            )
        found.append(PixelInput(request, position, pixels, spec))
    return found


def convert(inputs: Sequence[PixelInput]) -> list[tuple[PixelInput, Exception]]:
    """Replace every input by its FP32 values in its request; the inputs that could not be
    converted, with why (their requests are left as they were)."""
    groups: dict[tuple[int, str, tuple[int, ...]], list[PixelInput]] = {}
    for item in inputs:
        key = (id(item.spec), item.pixels.dtype.str, item.pixels.shape[1:])
        groups.setdefault(key, []).append(item)
    failed: list[tuple[PixelInput, Exception]] = []
    for group in groups.values():
        try:
            _convert_together(group)
        except Exception:  # find the input at fault: convert them one by one
            for item in group:
                try:
                    _convert_together([item])
                except Exception as exc:
                    failed.append((item, exc))
    return failed


def _convert_together(group: Sequence[PixelInput]) -> None:
    pixels = group[0].pixels if len(group) == 1 else np.concatenate([i.pixels for i in group])
    values = group[0].spec.apply(pixels)
    start = 0
    for item in group:
        rows = item.pixels.shape[0]
        name = item.request.inputs[item.position].name
        item.request.inputs[item.position] = InferTensor.from_array(
            name, values[start : start + rows]
        )
        start += rows
