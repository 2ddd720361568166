"""Protocol-neutral inference requests and responses, as the dataplane sees them.

Transports (the gRPC servicer, the Kafka agents) convert their wire messages
into these types and back; nothing below the transports knows about protobuf
or JSON. Tensors hold decoded numpy arrays whose dtype matches the Open
Inference Protocol datatype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Open Inference Protocol datatype -> numpy dtype (BYTES is an object array of bytes).
DATATYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_DATATYPE: dict[np.dtype[Any], str] = {v: k for k, v in DATATYPE_TO_NUMPY.items()}


@dataclass(slots=True)
class InferTensor:
    """A named tensor with its Open Inference Protocol datatype and its data."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_array(cls, name: str, array: np.ndarray) -> InferTensor:
        """Wrap a numpy array, taking the datatype from its dtype."""
        datatype = NUMPY_TO_DATATYPE.get(array.dtype)
        if datatype is None:
            raise ValueError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")
        return cls(name=name, datatype=datatype, shape=tuple(array.shape), data=array)


@dataclass(slots=True)
class InferRequest:
    """One inference request (any number of rows along the batch axis)."""

    model_name: str
    inputs: list[InferTensor]
    model_version: str = ""  # "" = the latest ready version
    id: str = ""
    requested_outputs: list[str] = field(default_factory=list)  # empty = all outputs
    # output name -> k: answer that output as its top k classes (Triton's classification)
    class_counts: dict[str, int] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None  # time.monotonic() after which the request must not run


@dataclass(slots=True)
class Timings:
    """Where a request's time went, in seconds."""

    queue_s: float = 0.0
    compute_s: float = 0.0  # the batch's model execution (Triton's compute_infer)
    batch_size: int = 0
    input_s: float = 0.0  # the batch's joining of inputs (Triton's compute_input)
    output_s: float = 0.0  # the batch's checking and splitting of outputs (compute_output)


@dataclass(slots=True)
class InferResponse:
    """The outputs of one request, from one model version."""

    model_name: str
    model_version: str
    outputs: list[InferTensor]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
