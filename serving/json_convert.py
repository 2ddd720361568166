"""Open Inference Protocol JSON (its REST form) <-> `serving.types`, with no transport code.

Used by the Kafka path, whose messages carry OIP JSON bodies. Tensor `data` is
a flat list in row-major order (nested lists are accepted and flattened);
BYTES elements are strings. Every problem is an `InvalidInput` naming the
tensor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from headrace.errors import InvalidInput
from serving.classification import class_counts
from serving.types import DATATYPE_TO_NUMPY, InferRequest, InferResponse, InferTensor

MAX_ELEMENTS = 1 << 28

# The JSON types each datatype's elements may have, as in Triton's JSON parser: no numbers
# in strings, no booleans as numbers, no fractions in integer tensors.
_JSON_TYPES: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str}),
    **{dt: frozenset({int, float}) for dt in ("FP16", "FP32", "FP64")},
    **{dt: frozenset({int}) for dt in DATATYPE_TO_NUMPY if dt.startswith(("INT", "UINT"))},
}


def _element_count(name: str, shape: list[int]) -> int:
    if any(type(d) is not int or d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {shape} must hold non-negative integers")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInput(f"input {name!r}: shape {shape} holds {count} elements, too many")
    return count


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        return [x for item in data for x in _flatten(item)]
    return data


def _json_type_name(kind: type) -> str:
    names = {bool: "boolean", int: "integer", float: "fractional", str: "string"}
    return names.get(kind, "array" if kind is list else "null" if kind is type(None) else "object")


def tensor_from_json(body: dict[str, Any]) -> InferTensor:
    """One OIP JSON tensor -> `InferTensor` (checked against its shape and datatype)."""
    name = str(body.get("name", ""))
    if not name:
        raise InvalidInput("every input needs a non-empty 'name'")
    datatype = body.get("datatype")
    if datatype not in DATATYPE_TO_NUMPY:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}")
    shape = body.get("shape")
    if not isinstance(shape, list):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of integers")
    count = _element_count(name, shape)
    values = _flatten(body.get("data"))
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {count} values, 'data' has {len(values)}"
        )
    wrong = {type(v) for v in values} - _JSON_TYPES[datatype]
    if wrong:
        found = ", ".join(sorted(_json_type_name(t) for t in wrong))
        raise InvalidInput(f"input {name!r}: {datatype} data cannot hold {found} values")
    dtype = DATATYPE_TO_NUMPY[datatype]
    try:
        if datatype == "BYTES":
            array = np.array([v.encode() for v in values], dtype=np.object_)
        else:
            array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"input {name!r}: data does not fit {datatype}: {exc}") from None
    parameters = body.get("parameters") or {}
    return InferTensor(name, datatype, tuple(shape), array.reshape(shape), dict(parameters))


def request_from_json(
    body: dict[str, Any], model_name: str, model_version: str = ""
) -> InferRequest:
    """An OIP JSON request body -> `InferRequest`."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("the request has no inputs")
    tensors = [tensor_from_json(t if isinstance(t, dict) else {}) for t in inputs]
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise InvalidInput(f"duplicate input names in {names}")
    outputs = [
        (str(o.get("name", "")), o.get("parameters") or {})
        for o in body.get("outputs") or []
        if isinstance(o, dict)
    ]
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=str(body.get("id", "")),
        inputs=tensors,
        requested_outputs=[name for name, _ in outputs],
        class_counts=class_counts(
            (name, params) for name, params in outputs if isinstance(params, dict)
        ),
        parameters=dict(body.get("parameters") or {}),
    )


def tensor_to_json(tensor: InferTensor) -> dict[str, Any]:
    """`InferTensor` -> OIP JSON tensor with flat data."""
    flat = np.asarray(tensor.data).reshape(-1)
    data = flat.tolist()
    if flat.dtype.kind == "O":  # BYTES elements travel as strings
        data = [v.decode() if isinstance(v, bytes) else v for v in data]
    return {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
        "data": data,
    }


def response_to_json(response: InferResponse) -> dict[str, Any]:
    """`InferResponse` -> OIP JSON response body."""
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "parameters": dict(response.parameters),
        "outputs": [tensor_to_json(t) for t in response.outputs],
    }
