"""Reading the signature layer of a published version: from the ONNX file that is served, or
from the torch weights published beside it.

The layer is named as in torch's state_dict. The TorchScript exporter keeps
those names for initializers it leaves alone (every LeNet-5 weight), but a
convolution followed by batch norm is folded into a new tensor named
`onnx::Conv_<n>` with other values (ResNet-20). So the layer is read from
`model.onnx` when an initializer of that name and shape is there, and from
`weights.pt` otherwise; the report says which.

A quantized version (`headrace compress --quant`) has neither: its `model.onnx`
stores each Conv/Linear weight as an integer initializer under a short
generated name, read by a DequantizeLinear, and it carries no `weights.pt`.
Those weights are dequantized as ONNX Runtime does (`(q - zero_point) * scale`)
and matched, in graph order, to the Conv/Linear weights of the version's
architecture in state_dict order; the match must hold shape for shape (it does
not for a pruned model, whose signature layer has lost weights anyway). A pruned
float version keeps the layer names in its `model.onnx`, with fewer channels: it is
refused the same way, rather than read through a projection made for another size.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from headrace.errors import WatermarkError
from security.watermark.key import WatermarkKey
from security.watermark.whitebox import resolve_layer
from serving.repository import MODEL_FILE, ModelVersion
from training.published import WEIGHTS_FILE, load_published_model, published_architecture

_INTEGER_TYPES = {
    TensorProto.INT4, TensorProto.UINT4, TensorProto.INT8, TensorProto.UINT8,
    TensorProto.INT16, TensorProto.UINT16,
}  # fmt: skip


def dequantized_weights(graph: onnx.GraphProto) -> list[tuple[np.ndarray, str]]:
    """(float values, stored element type) of each integer initializer a DequantizeLinear
    reads, in graph order; empty for a graph without quantized weights."""
    integers = {t.name: t for t in graph.initializer if t.data_type in _INTEGER_TYPES}
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    found = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in integers:
            continue
        stored = integers[node.input[0]]
        values = numpy_helper.to_array(stored).astype(np.float64)
        scale = numpy_helper.to_array(constants[node.input[1]]).astype(np.float64)
        zero = np.zeros_like(scale)
        if len(node.input) > 2 and node.input[2]:
            zero = numpy_helper.to_array(constants[node.input[2]]).astype(np.float64)
        if scale.ndim == 1 and values.ndim > 1:  # per axis: one scale per slice along `axis`
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % values.ndim
            shape = [1] * values.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        element = TensorProto.DataType.Name(stored.data_type).lower()
        found.append((((values - zero) * scale).astype(np.float32), element))
    return found


def _quantized_layer(
    key: WatermarkKey, version: ModelVersion, quantized: list[tuple[np.ndarray, str]]
) -> tuple[np.ndarray, str, str]:
    """The key's signature layer among a quantized version's dequantized weights."""
    model = published_architecture(version)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    layer = resolve_layer(shapes, key.whitebox_layer)
    weights = [n for n, shape in shapes.items() if len(shape) >= 2 and n.endswith("weight")]
    what = f"model {version.name!r} version {version.version}"
    if [shapes[n] for n in weights] != [values.shape for values, _ in quantized]:
        raise WatermarkError(
            f"{what}: the quantized weights in its {MODEL_FILE} do not match the layers of "
            f"architecture {version.metadata.architecture!r} (pruned channels?), so the white-box "
            "signature cannot be read from them; pass --no-whitebox for the black-box test alone"
        )
    if layer not in weights:
        raise WatermarkError(
            f"{what}: the signature layer {layer!r} is not among the quantized weights in its "
            f"{MODEL_FILE}; pass --no-whitebox for the black-box test alone"
        )
    values, element = quantized[weights.index(layer)]
    return values, layer, f"{MODEL_FILE}, {element} dequantized"


def signature_weights(key: WatermarkKey, version: ModelVersion) -> tuple[np.ndarray, str, str]:
    """(weights, layer name, source file) of the key's signature layer in a published version."""
    version.verify()
    graph = onnx.load(str(version.model_file), load_external_data=False).graph
    quantized = dequantized_weights(graph)
    if quantized and WEIGHTS_FILE not in version.metadata.sha256:
        return _quantized_layer(key, version, quantized)
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state: dict[str, np.ndarray] | None = None
    if WEIGHTS_FILE in version.metadata.sha256:
        model = load_published_model(version)
        state = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    if state is not None:
        shapes = {n: tuple(a.shape) for n, a in state.items()}
    else:  # ONNX only (a compressed version): its layers are matched against its architecture
        architecture = published_architecture(version).state_dict()
        shapes = {n: tuple(t.shape) for n, t in architecture.items()}
    layer = resolve_layer(shapes, key.whitebox_layer)
    in_onnx = initializers.get(layer)
    if in_onnx is not None and in_onnx.shape == shapes[layer]:
        return in_onnx, layer, MODEL_FILE
    if in_onnx is not None and state is None:  # the projection would be another key's matrix
        raise WatermarkError(
            f"model {version.name!r} version {version.version}: {layer!r} in its {MODEL_FILE} "
            f"has shape {list(in_onnx.shape)}, not the {list(shapes[layer])} of architecture "
            f"{version.metadata.architecture!r} (pruned channels?), so the white-box signature "
            "cannot be read from it; pass --no-whitebox for the black-box test alone"
        )
    if state is not None:
        return state[layer], layer, WEIGHTS_FILE
    raise WatermarkError(
        f"model {version.name!r} version {version.version}: {layer!r} is not in {MODEL_FILE} "
        f"and the version has no {WEIGHTS_FILE} to read it from"
    )
