"""Quantization-aware training with NNI's `QATQuantizer`, and the plain torch model it exports.

`QatSession(model, bits)` wraps every Conv2d and Linear of `model` in place
with NNI's wrappers: each forward fake-quantizes the weights (symmetric,
per-tensor, int8 or int4) and, optionally, the layer inputs (affine uint8),
and in train mode NNI tracks their ranges and updates the scales. Training
itself is the ordinary training loop (the compression recipe hands the wrapped
model to `Trainer`), so no NNI evaluator is involved.

NNI's wrapped model does not export to ONNX. `export_model()` reads NNI's
scales, unwraps the model and swaps each quantized layer for a
`FakeQuantLayer`: the same arithmetic with `torch.fake_quantize_per_tensor_affine`,
which the ONNX exporter writes as QuantizeLinear/DequantizeLinear pairs
(`training.compression.onnx_export` then stores the weights as integers).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from headrace.errors import CompressionError

QUANTIZED_TYPES = ("Conv2d", "Linear")
ONNX_INT8 = (-128, 127)  # the signed range torch's ONNX exporter accepts for QuantizeLinear
_WEIGHT = "weight"
_INPUT = "_input_0"


class QuantParams(BaseModel):
    """One quantizer: `q = clamp(round(x / scale) + zero_point, qmin, qmax)`."""

    model_config = ConfigDict(frozen=True)

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """`x` rounded to this quantizer's grid (quantize then dequantize), as NNI computes it."""
        q = torch.round(torch.clamp(x / self.scale + self.zero_point, self.qmin, self.qmax))
        return (q - self.zero_point) * self.scale


class LayerQuant(BaseModel):
    """The quantizers of one layer: its weights and (optionally) its input."""

    model_config = ConfigDict(frozen=True)

    weight: QuantParams
    input: QuantParams | None = None


def qat_config_list(bits: int, activations: bool) -> list[dict[str, Any]]:
    """NNI's config list: Conv2d/Linear weights at `bits` (symmetric), inputs uint8 (affine)."""
    if bits not in (4, 8):
        raise CompressionError(f"quantization supports 8 or 4 weight bits, not {bits}")
    targets = [_WEIGHT, "_input_"] if activations else [_WEIGHT]
    settings: dict[str, dict[str, str]] = {
        _WEIGHT: {"quant_dtype": f"int{bits}", "quant_scheme": "symmetric"}
    }
    if activations:
        settings["_input_"] = {"quant_dtype": "uint8", "quant_scheme": "affine"}
    return [
        {
            "op_types": list(QUANTIZED_TYPES),
            "quant_dtype": f"int{bits}",
            "target_names": targets,
            "target_settings": settings,
        }
    ]


class QatSession:
    """NNI's QAT wrappers on one model, from wrapping to the exportable fake-quant model."""

    def __init__(self, model: nn.Module, bits: int, activations: bool = True) -> None:
        from nni.compression.quantization import QATQuantizer  # heavy: imported on use

        if not any(type(m).__name__ in QUANTIZED_TYPES for m in model.modules()):
            raise CompressionError("the model has no Conv2d or Linear layer to quantize")
        self.model = model
        self.bits = bits
        logging.getLogger("nni").setLevel(logging.WARNING)
        # No evaluator: the training loop drives the wrapped model; with quant_start_step 0 the
        # wrappers fake-quantize from the first step and update scales in every train forward.
        self.quantizer = QATQuantizer(model, qat_config_list(bits, activations), None)
        self._wrapped = True

    def layer_quant(self) -> dict[str, LayerQuant]:
        """Each quantized layer's scales and zero points, by module name (after training)."""
        found: dict[str, LayerQuant] = {}
        for name, targets in self.quantizer.get_calibration_config().items():
            params = {target: _params(name, target, info) for target, info in targets.items()}
            found[name] = LayerQuant(weight=params[_WEIGHT], input=params.get(_INPUT))
        return found

    def export_model(self) -> nn.Module:
        """Unwrap the model and return a copy whose quantized layers are `FakeQuantLayer`s."""
        quant = self.layer_quant()
        if self._wrapped:
            self.quantizer.unwrap_model()
            self._wrapped = False
        exported = copy.deepcopy(self.model).eval()
        for name, layer_quant in quant.items():
            parent, attr = _parent(exported, name)
            setattr(parent, attr, FakeQuantLayer(getattr(parent, attr), layer_quant))
        return exported


def _params(module: str, target: str, info: dict[str, Any]) -> QuantParams:
    scale, zero_point = info.get("scale"), info.get("zero_point")
    if not isinstance(scale, torch.Tensor) or not isinstance(zero_point, torch.Tensor):
        raise CompressionError(
            f"layer {module!r} has no quantization scale for {target!r}: it never ran in a "
            "training step; quantization-aware training needs at least one epoch"
        )
    if scale.numel() != 1:
        raise CompressionError(f"layer {module!r}: only per-tensor scales are supported")
    dtype = str(info.get("quant_dtype") or "int8")
    bits = int(dtype.removeprefix("u").removeprefix("int"))
    if dtype.startswith("u"):
        qmin, qmax = 0, 2**bits - 1
    else:  # NNI's signed range is symmetric: -(2^(b-1) - 1) .. 2^(b-1) - 1
        qmin, qmax = -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1
    return QuantParams(
        scale=float(scale), zero_point=int(round(float(zero_point))), qmin=qmin, qmax=qmax
    )


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


class FakeQuantLayer(nn.Module):
    """A Conv2d or Linear whose weights sit on their integer grid and whose input is fake-quantized.

    Exported to ONNX, each fake-quantize becomes QuantizeLinear + DequantizeLinear.
    The weights are stored already rounded, so quantizing them again at export
    (with the exporter's int8 range) gives exactly the integers NNI trained with,
    also for int4 whose range the exporter does not accept.
    """

    def __init__(self, layer: nn.Module, quant: LayerQuant) -> None:
        super().__init__()
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            raise CompressionError(f"cannot quantize a {type(layer).__name__} layer")
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            raise CompressionError(
                f"cannot quantize a Conv2d with padding_mode {layer.padding_mode!r}"
            )
        if quant.weight.zero_point != 0:
            raise CompressionError("weights must be quantized symmetrically (zero point 0)")
        self.layer = layer
        self.quant = quant
        with torch.no_grad():
            layer.weight.copy_(quant.weight.grid(layer.weight))
        layer.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q_in = self.quant.input
        if q_in is not None:
            x = torch.fake_quantize_per_tensor_affine(
                x, q_in.scale, q_in.zero_point, q_in.qmin, q_in.qmax
            )
        weight = torch.fake_quantize_per_tensor_affine(
            self.layer.weight, self.quant.weight.scale, 0, *ONNX_INT8
        )
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        assert isinstance(layer, nn.Conv2d)
        return F.conv2d(
            x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
        )
