"""Hostile files for the safe-loading tests: ONNX external data, and a pickle carrying code.

`external_data_model(path, location)` writes `output = input + w` (4 floats) where `w` is
read from `location`, resolved by the runtime relative to the model's folder. The
location is written as given, so tests can make it `../x`, `a/../../x` or absolute.
`malicious_weights(path, marker)` writes a torch file that, if unpickled, creates `marker`.
`identity_model(path)` writes a harmless `out = input` model (4 floats a row) to publish.
Importable from unit and integration tests (tests/ is on sys.path through conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from training.models import build_model

WIDTH = 4
WEIGHTS = np.arange(1, WIDTH + 1, dtype=np.float32)


def identity_model(path: Path) -> Path:
    """A plain model: output `out` is input `input` ([batch, WIDTH] floats)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["out"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", WIDTH])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_weights(path: Path) -> Path:
    """The raw little-endian float32 bytes of WEIGHTS, as ONNX external data stores them."""
    path.write_bytes(WEIGHTS.astype("<f4").tobytes())
    return path


def external_data_model(path: Path, location: str) -> Path:
    """Write the model to `path`; its initializer `w` names `location` as its data file."""
    weight = numpy_helper.from_array(WEIGHTS, "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "w"], ["output"])],
        "external",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", WIDTH])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def constant_node_model(path: Path, location: str) -> Path:
    """Like `external_data_model`, but the external tensor hides in a Constant node's attribute."""
    weight = numpy_helper.from_array(WEIGHTS, "w_value")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=weight),
            helper.make_node("Add", ["input", "w"], ["output"]),
        ],
        "external_constant",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", WIDTH])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())  # not onnx.save: it may write external data
    return path


def function_default_model(path: Path, location: str) -> Path:
    """Like `constant_node_model`, but the external tensor is the default value of an attribute
    of a model-local function (FunctionProto.attribute_proto), which the runtime inlines."""
    weight = numpy_helper.from_array(WEIGHTS, "w_default")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    constant = helper.make_node("Constant", [], ["w"])
    constant.attribute.append(
        AttributeProto(name="value", ref_attr_name="weights", type=AttributeProto.TENSOR)
    )
    function = helper.make_function(
        "local", "AddWeights", ["x"], ["y"],
        [constant, helper.make_node("Add", ["x", "w"], ["y"])],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    function.attribute_proto.append(helper.make_attribute("weights", weight))
    graph = helper.make_graph(
        [helper.make_node("AddWeights", ["input"], ["output"], domain="local")],
        "external_function_default",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", WIDTH])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[function])
    model.ir_version = 9  # functions need IR 8+; attribute defaults IR 9
    path.write_bytes(model.SerializeToString())
    return path


class _Payload:
    """Unpickling this writes `marker`: what an attacker's code would do, made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.write_text, (self.marker, "code ran"))


def malicious_weights(path: Path, marker: Path) -> Path:
    """A torch file whose state_dict looks normal but carries a payload that creates `marker`."""
    state: dict[str, Any] = dict(build_model("lenet5").state_dict())
    state["payload"] = _Payload(marker)
    torch.save(state, path)
    return path
