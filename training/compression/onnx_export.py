"""QDQ ONNX export: weights stored as int8 or packed int4 initializers that ONNX Runtime runs.

A `FakeQuantLayer` model exports (opset 17, `training.export.export_onnx`) with
QuantizeLinear -> DequantizeLinear on each float weight. `store_integer_weights`
then folds every QuantizeLinear whose input is a constant: the weight becomes
an integer initializer (INT8, or INT4 packed two per byte) feeding the
DequantizeLinear directly, and the float copy is dropped. INT4 tensors need
opset 21 (IR version 10); ONNX Runtime >= 1.20 runs DequantizeLinear on them.
`verify_quantized` checks that ONNX Runtime matches the torch fake-quant model
(`judge_export`: logits within the error a correct export makes, classes alike
where the torch model's top two logits are further apart than that).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from headrace.errors import ExportMismatch
from training.export import INPUT_NAME, OUTPUT_NAME, export_onnx

INT4_OPSET = 21
INT4_IR_VERSION = 10
_RANGES = {8: (-128, 127), 4: (-8, 7)}
_NUMPY_TYPES: dict[int, type] = {8: np.int8, 4: ml_dtypes.int4}


def export_quantized(model: nn.Module, input_shape: tuple[int, ...], path: Path, bits: int) -> Path:
    """Export a fake-quant model to `path` with `bits`-bit integer weight initializers."""
    if bits not in _RANGES:
        raise ExportMismatch(f"integer weights of {bits} bits are not supported (use 8 or 4)")
    export_onnx(model, input_shape, path)
    proto = onnx.load(str(path))
    folded = store_integer_weights(proto, bits)
    if folded == 0:
        raise ExportMismatch("the exported model has no quantized weights; was it fake-quantized?")
    compact_names(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of the graph's initializers and Constant nodes, by output name."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _quantize(weights: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """ONNX QuantizeLinear (round half to even) without the saturation, as int64."""
    w = weights.astype(np.float32)
    s = np.asarray(scale, dtype=np.float32)
    return np.rint(w / s).astype(np.int64) + np.asarray(zero_point).astype(np.int64)


def store_integer_weights(proto: onnx.ModelProto, bits: int) -> int:
    """Fold QuantizeLinear(constant) into `bits`-bit integer initializers; returns how many.

    Raises ExportMismatch if a weight does not fit in `bits` bits (it was not
    trained for them) or if a quantized weight feeds anything but DequantizeLinear.
    """
    graph = proto.graph
    constants = _constants(graph)
    floats = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    lo, hi = _RANGES[bits]
    dropped: set[int] = set()
    new_inits: list[TensorProto] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in floats:
            continue
        weight_name = node.input[0]
        scale_name = node.input[1]
        zero_name = node.input[2] if len(node.input) > 2 else ""
        zero = constants.get(zero_name, np.zeros((), dtype=np.int8))
        q = _quantize(constants[weight_name], constants[scale_name], zero)
        if q.min() < lo or q.max() > hi:
            raise ExportMismatch(
                f"weight {weight_name!r} spans [{q.min()}, {q.max()}], outside the {bits}-bit "
                f"range [{lo}, {hi}]: it was not quantization-aware trained for {bits} bits"
            )
        consumers = [n for n in graph.node if node.output[0] in n.input]
        if not consumers or any(n.op_type != "DequantizeLinear" for n in consumers):
            raise ExportMismatch(f"quantized weight {weight_name!r} feeds more than a dequantizer")
        np_type = _NUMPY_TYPES[bits]
        q_name, z_name = f"{weight_name}_int{bits}", f"{weight_name}_zero_point_int{bits}"
        new_inits.append(numpy_helper.from_array(q.astype(np_type), q_name))
        new_inits.append(numpy_helper.from_array(np.asarray(zero).astype(np_type), z_name))
        for consumer in consumers:
            consumer.input[0] = q_name
            if len(consumer.input) > 2:
                consumer.input[2] = z_name
            else:
                consumer.input.append(z_name)
        dropped.add(index)
    kept = [n for i, n in enumerate(graph.node) if i not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    _drop_unused(graph)
    if bits == 4:
        _set_opset(proto, INT4_OPSET)
        proto.ir_version = max(proto.ir_version, INT4_IR_VERSION)
    return len(dropped)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers and Constant nodes nothing reads any more."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    kept_nodes = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(kept_nodes)


def compact_names(proto: onnx.ModelProto) -> None:
    """Give internal tensors short names and drop node names and doc strings.

    The exporter names every tensor after its module path (`/features/features.0/
    QuantizeLinear_output_0`); with a few dozen Q/DQ nodes those names are ~10% of
    an int4 LeNet-5 file. Graph inputs and outputs keep their names.
    """
    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    renamed: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return renamed.setdefault(name, f"t{len(renamed):x}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
        tensor.doc_string = ""
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        for i, name in enumerate(node.input):
            node.input[i] = short(name)
        for i, name in enumerate(node.output):
            node.output[i] = short(name)
    for value in graph.value_info:
        value.name = short(value.name)
    graph.doc_string = ""
    proto.doc_string = ""


def _set_opset(proto: onnx.ModelProto, version: int) -> None:
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, version)


def weight_types(path: Path) -> dict[str, int]:
    """Initializer name -> ONNX element type (TensorProto enum) of a model file."""
    proto = onnx.load(str(path), load_external_data=False)
    return {t.name: t.data_type for t in proto.graph.initializer}


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session configured as serving configures one (`threads` intra-op)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


MIN_TOLERANCE = 0.0075
"""The difference every QDQ export is allowed whatever its logits. An activation one step apart
in the two runtimes moved freshly initialised models' logits by up to 0.0011 (LeNet-5), 0.0022
(lenet5-wide) and 0.0033 (resnet20); a wrong weight scale (x1.25) or two swapped output
channels in one layer moved a fresh LeNet-5's by 0.016 or more."""
RELATIVE_TOLERANCE = 0.02
"""Beyond `MIN_TOLERANCE`, the difference allowed as a fraction of the largest |logit| (correct
exports measured 0.2% and less; broken ones of a LeNet-5 after 5 steps 3.6% and more)."""


def allowed_difference(expected: np.ndarray, tolerance: float) -> float:
    """The logit difference a correct export may make on these torch logits.

    A fraction of the largest |logit| (`RELATIVE_TOLERANCE`), at least
    `MIN_TOLERANCE` and at most `tolerance`. Near-untrained models have logits of
    ~0.1, where 0.05 would let a wrong scale or a permuted weight through.
    """
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    relative = RELATIVE_TOLERANCE * scale if np.isfinite(scale) else tolerance
    return min(tolerance, max(MIN_TOLERANCE, relative))


def top1_margins(logits: np.ndarray) -> np.ndarray:
    """Per row: the top logit minus the runner-up (infinite with a single output)."""
    if logits.shape[1] < 2:
        return np.full(len(logits), np.inf, dtype=np.float32)
    top2 = np.partition(logits, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def judge_export(
    expected: np.ndarray, actual: np.ndarray, tolerance: float, min_agreement: float = 0.99
) -> float:
    """Raise ExportMismatch unless ONNX Runtime's logits `actual` match torch's `expected`.

    The largest absolute difference must be within `allowed_difference`, and the
    predicted classes must agree on at least `min_agreement` of the rows whose
    torch top-1 margin is larger than that difference: where the two best logits
    are closer than the error the export is allowed, either class is a correct
    answer (a near-untrained model's logits tie to ~0.001). Returns the largest
    difference.
    """
    allowed = allowed_difference(expected, tolerance)
    worst = float(np.abs(actual - expected).max()) if expected.size else 0.0
    decided = top1_margins(expected) > allowed
    agree = int((actual.argmax(1) == expected.argmax(1))[decided].sum())
    rows = int(decided.sum())
    agreement = agree / max(rows, 1)
    if not worst <= allowed or agreement < min_agreement:  # `not <=` also catches NaN
        raise ExportMismatch(
            f"ONNX Runtime output differs from the torch fake-quantized model (largest logit "
            f"difference {worst:.3g}, {allowed:.3g} allowed; same class on {agreement:.1%} of "
            f"the {rows} of {len(expected)} inputs whose top two logits are more than "
            f"{allowed:.3g} apart); the model was not published"
        )
    return worst


@torch.no_grad()
def verify_quantized(
    model: nn.Module,
    onnx_path: Path,
    inputs: Iterable[torch.Tensor],
    tolerance: float,
    min_agreement: float = 0.99,
) -> float:
    """Raise ExportMismatch unless ONNX Runtime matches the torch fake-quant `model`.

    Runs both on each input batch and judges all logits together (`judge_export`;
    `tolerance` is the largest difference allowed at all). Returns the largest
    difference.
    """
    was_training = model.training
    model.eval()
    sess = session(onnx_path)
    expected, actual = [], []
    for x in inputs:
        expected.append(model(x).numpy())
        (out,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        actual.append(np.asarray(out))
    model.train(was_training)
    if not expected:
        return 0.0
    return judge_export(np.concatenate(expected), np.concatenate(actual), tolerance, min_agreement)
