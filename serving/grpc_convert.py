"""Conversions between the Open Inference Protocol's protobuf messages and `serving.types`.

`request_from_proto` is the one place where client bytes become arrays, so it
checks every claim a request makes (datatype, shape, byte and element counts,
where the data is) before it allocates anything in proportion to the claimed
shape, and, given the server's `check_inputs`, whether the model takes the
inputs' names, datatypes and shapes before it decodes any data that decoding
reads (raw inputs of every datatype but BYTES and BOOL decode as views and skip
that early check; the server makes it before queueing); each problem is an
`InvalidInput` naming the input. Raw tensor data is little-endian; BYTES
elements travel as a 4-byte little-endian length and the bytes. Inputs decoded
from raw_input_contents are read-only views of the message's bytes
(`np.frombuffer`), not copies.

The other direction (responses, metadata, configuration) converts what the
server built itself, so a mistake there is a `ValueError`/`TypeError`, not the
client's fault.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headrace.errors import InvalidInput
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from serving.classification import class_counts
from serving.model_config import ModelConfig, TensorSpec
from serving.types import DATATYPE_TO_NUMPY, InferRequest, InferResponse, InferTensor
from serving.version_policy import VersionPolicy

# The InferTensorContents field carrying each datatype; FP16 has none (raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip

# Our datatype names -> Triton's model-config enum (BYTES is Triton's TYPE_STRING).
DATATYPE_TO_CONFIG: dict[str, mc.DataType] = {
    dt: mc.DataType.Value("TYPE_STRING" if dt == "BYTES" else f"TYPE_{dt}")
    for dt in DATATYPE_TO_NUMPY
}

# Parameters that point a tensor at a shared memory region (Triton's shared memory extensions).
SHARED_MEMORY_PARAMETERS = (
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
)

_LENGTH = struct.Struct("<I")  # the length prefix of one raw BYTES element
_LITTLE_ENDIAN = {dt: dtype.newbyteorder("<") for dt, dtype in DATATYPE_TO_NUMPY.items()}


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what one decoded input may claim."""

    max_elements: int = 2**31  # per input
    max_rank: int = 32  # numpy arrays hold at most 64 dims


_DEFAULT_LIMITS = DecodeLimits()

# Datatypes whose raw data decodes as a view of the message's bytes, reading none of it.
_VIEWED = frozenset(DATATYPE_TO_NUMPY) - {"BYTES", "BOOL"}


# -- requests ------------------------------------------------------------------------------


def parameters_to_dict(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A protobuf parameters map as a plain dict (None for a parameter with no value set)."""
    choices = {key: value.WhichOneof("parameter_choice") for key, value in params.items()}
    return {key: choice and getattr(params[key], choice) for key, choice in choices.items()}


def _refuse_shared_memory(kind: str, name: str, params: Mapping[str, pb.InferParameter]) -> None:
    used = [key for key in SHARED_MEMORY_PARAMETERS if key in params]
    if used:
        raise InvalidInput(
            f"{kind} {name!r} asks for shared memory ({', '.join(used)}), which this server "
            "does not offer (ServerMetadata lists its extensions); send the data in the request"
        )


def _element_count(name: str, shape: Sequence[int], limits: DecodeLimits) -> int:
    if len(shape) > limits.max_rank:
        raise InvalidInput(
            f"input {name!r}: shape has {len(shape)} dims, more than the limit of {limits.max_rank}"
        )
    if shape and min(shape) < 0:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dim")
    count = math.prod(shape)  # Python ints: no overflow, and at most max_rank 63-bit factors
    if count > limits.max_elements:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} has an element count of {count}, above the "
            f"limit of {limits.max_elements}; split the request"
        )
    return count


def _decode_raw_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """Split length-prefixed BYTES elements (at least `count` prefixes' worth of bytes, as
    `_check_raw_size` saw), checking each length before building its element."""
    view, size = memoryview(raw), len(raw)
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        start = offset + _LENGTH.size
        length = _LENGTH.unpack_from(view, offset)[0] if start <= size else size
        if start + length > size:
            raise InvalidInput(f"input {name!r}: raw BYTES element {i} runs past the data's end")
        out[i] = bytes(view[start : start + length])
        offset = start + length
    if offset != len(raw):
        raise InvalidInput(
            f"input {name!r}: raw byte size {len(raw)} holds more than the {count} BYTES "
            f"elements of its shape ({len(raw) - offset} bytes left over)"
        )
    return out


def _check_raw_size(name: str, datatype: str, raw: bytes, count: int) -> None:
    if datatype == "BYTES":
        if len(raw) < _LENGTH.size * count:
            raise InvalidInput(
                f"input {name!r}: raw byte size {len(raw)} is too small for {count} BYTES "
                f"elements (each needs a {_LENGTH.size}-byte length prefix)"
            )
        return
    dtype = _LITTLE_ENDIAN[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: raw byte size {len(raw)} does not match {count} {datatype} "
            f"elements of {dtype.itemsize} bytes ({count * dtype.itemsize} bytes expected)"
        )


def _decode_raw(name: str, datatype: str, raw: bytes, count: int) -> np.ndarray:
    """Raw data whose size `_check_raw_size` accepted -> a flat array."""
    if datatype == "BYTES":
        return _decode_raw_bytes(name, raw, count)
    array = np.frombuffer(raw, dtype=_LITTLE_ENDIAN[datatype])
    if datatype == "BOOL" and count and array.view(np.uint8).max() > 1:
        raise InvalidInput(f"input {name!r}: raw BOOL bytes must be 0 or 1")
    return array


def _check_typed(name: str, datatype: str, contents: pb.InferTensorContents, count: int) -> None:
    used = [field.name for field, _ in contents.ListFields()]
    expected = CONTENTS_FIELD.get(datatype)
    if expected is None:
        raise InvalidInput(
            f"input {name!r}: {datatype} has no typed contents field; send it in raw_input_contents"
        )
    if any(field != expected for field in used):
        raise InvalidInput(
            f"input {name!r}: {datatype} data belongs in contents.{expected}, got {', '.join(used)}"
        )
    values = getattr(contents, expected)
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r}: contents.{expected} has {len(values)} values, the shape needs "
            f"{count} elements"
        )


def _decode_typed(
    name: str, datatype: str, contents: pb.InferTensorContents, count: int
) -> np.ndarray:
    """Typed contents that `_check_typed` accepted -> a flat array."""
    expected = CONTENTS_FIELD[datatype]
    values = getattr(contents, expected)
    target = DATATYPE_TO_NUMPY[datatype]
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        for i, value in enumerate(values):
            out[i] = value
        return out
    if target.kind not in "iu" or target.itemsize >= 4:
        return np.array(values, dtype=target)
    wide = np.array(values, dtype=np.int64)  # INT8/16, UINT8/16 travel as 32-bit
    info = np.iinfo(target)
    if count and (wide.min() < info.min or wide.max() > info.max):
        raise InvalidInput(
            f"input {name!r}: contents.{expected} holds values outside the {datatype} range "
            f"[{info.min}, {info.max}]"
        )
    return wide.astype(target)


def _check_structure(msg: pb.ModelInferRequest) -> bool:
    """Request-level rules; returns whether the request carries raw_input_contents."""
    if not msg.inputs:
        raise InvalidInput(f"empty request: request for model {msg.model_name!r} has no inputs")
    if len(msg.inputs) > 1:  # one input (the usual case) cannot repeat a name
        for name, times in Counter(t.name for t in msg.inputs).items():
            if times > 1:
                raise InvalidInput(f"input {name!r} appears {times} times in the request")
    raw = len(msg.raw_input_contents)
    if not raw:
        return False
    if raw != len(msg.inputs):
        names = [t.name for t in msg.inputs]
        missing = f"input {names[raw]!r} has no entry" if raw < len(names) else "extra entries"
        raise InvalidInput(
            f"raw_input_contents has {raw} entries for {len(names)} inputs {names} ({missing}); "
            "when raw_input_contents is used it needs one entry per input"
        )
    for tensor in msg.inputs:
        if tensor.HasField("contents") and tensor.contents.ListFields():
            raise InvalidInput(
                f"input {tensor.name!r} has typed contents while the request uses "
                "raw_input_contents; use one or the other for all inputs"
            )
    return True


@dataclass(frozen=True)
class InputLayout:
    """An input's claims before its data is decoded (a `serving.validation.TensorLayout`)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


# What may see a request's inputs before their data is decoded: (model name, model version,
# the inputs' layouts); raises to refuse the request (`DataPlane.check_inputs`).
InputsCheck = Callable[[str, str, list[InputLayout]], None]


def _check_input(
    tensor: pb.ModelInferRequest.InferInputTensor,
    shape: tuple[int, ...],
    raw: bytes | None,
    limits: DecodeLimits,
) -> int:
    """Every claim of one input that can be checked without decoding its data; its
    element count."""
    name, datatype = tensor.name, tensor.datatype
    if tensor.parameters:
        _refuse_shared_memory("input", name, tensor.parameters)
    if datatype not in DATATYPE_TO_NUMPY:
        raise InvalidInput(
            f"input {name!r}: unknown datatype {datatype!r}; use one of "
            f"{', '.join(DATATYPE_TO_NUMPY)}"
        )
    count = _element_count(name, shape, limits)
    if raw is not None:
        _check_raw_size(name, datatype, raw, count)
    else:
        _check_typed(name, datatype, tensor.contents, count)
    return count


def _decode_input(
    tensor: pb.ModelInferRequest.InferInputTensor,
    shape: tuple[int, ...],
    raw: bytes | None,
    count: int,
) -> InferTensor:
    name, datatype = tensor.name, tensor.datatype
    if raw is not None:
        flat = _decode_raw(name, datatype, raw, count)
    else:
        flat = _decode_typed(name, datatype, tensor.contents, count)
    return InferTensor(
        name=name,
        datatype=datatype,
        shape=shape,
        data=flat.reshape(shape),
        parameters=parameters_to_dict(tensor.parameters) if tensor.parameters else {},
    )


def request_from_proto(
    msg: pb.ModelInferRequest,
    limits: DecodeLimits | None = None,
    check_inputs: InputsCheck | None = None,
) -> InferRequest:
    """Decode and check a ModelInferRequest; any problem is an `InvalidInput` naming the input.

    `check_inputs` (the server's: does the model take these names, datatypes and shapes?)
    runs after every claim is checked and before any data is decoded. Decoding costs in
    proportion to the data, and much more for typed contents and BYTES (a Python object
    per element: a 60 MB message of BYTES became 1.3 GB and held the event loop for 5 s),
    which a request the model cannot take must not get. Raw inputs of the other datatypes
    but BOOL decode as views that read nothing, so a request made only of those skips this
    early check: the server checks the same before it queues the request, and sparing the
    request path one check lets a small model serve more requests per second."""
    limits = limits or _DEFAULT_LIMITS
    uses_raw = _check_structure(msg)
    tensors = msg.inputs
    shapes = [tuple(tensor.shape) for tensor in tensors]
    raws = list(msg.raw_input_contents) if uses_raw else [None] * len(tensors)
    counts = [
        _check_input(tensor, shape, raw, limits)
        for tensor, shape, raw in zip(tensors, shapes, raws, strict=True)
    ]
    if check_inputs is not None and not (uses_raw and all(t.datatype in _VIEWED for t in tensors)):
        layouts = [
            InputLayout(t.name, t.datatype, shape) for t, shape in zip(tensors, shapes, strict=True)
        ]
        check_inputs(msg.model_name, msg.model_version, layouts)
    inputs = [
        _decode_input(tensor, shape, raw, count)
        for tensor, shape, raw, count in zip(tensors, shapes, raws, counts, strict=True)
    ]
    requested: list[str] = []
    classes: dict[str, int] = {}
    if msg.outputs:
        outputs = [
            (output.name, parameters_to_dict(output.parameters) if output.parameters else {})
            for output in msg.outputs
        ]
        for output in msg.outputs:
            if output.parameters:
                _refuse_shared_memory("output", output.name, output.parameters)
        requested = [name for name, _ in outputs]
        classes = class_counts(outputs)
    return InferRequest(
        model_name=msg.model_name,
        inputs=inputs,
        model_version=msg.model_version,
        id=msg.id,
        requested_outputs=requested,
        class_counts=classes,
        parameters=parameters_to_dict(msg.parameters) if msg.parameters else {},
    )


# -- responses -----------------------------------------------------------------------------


def set_parameter(param: pb.InferParameter, value: Any) -> None:
    """Store a Python bool, int, float or str in an InferParameter."""
    if isinstance(value, bool | np.bool_):
        param.bool_param = bool(value)
    elif isinstance(value, int | np.integer):
        setattr(param, "uint64_param" if value >= 2**63 else "int64_param", int(value))
    elif isinstance(value, float | np.floating):
        param.double_param = float(value)
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise TypeError(f"parameter value {value!r} is not a bool, int, float or str")


def _set_parameters(target: Any, params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        set_parameter(target[key], value)


def _element_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"BYTES element {value!r} is not bytes or str")


def tensor_to_raw(tensor: InferTensor) -> bytes:
    """The raw_*_contents encoding of a tensor: little-endian, row-major."""
    if tensor.datatype == "BYTES":
        parts = []
        for value in np.asarray(tensor.data, dtype=np.object_).flat:
            element = _element_bytes(value)
            parts += [_LENGTH.pack(len(element)), element]
        return b"".join(parts)
    data, dtype = tensor.data, _LITTLE_ENDIAN[tensor.datatype]
    if isinstance(data, np.ndarray) and data.dtype == dtype:
        return data.tobytes()  # row-major, whatever the array's memory layout
    return np.ascontiguousarray(data, dtype=dtype).tobytes()


def _fill_contents(contents: pb.InferTensorContents, tensor: InferTensor) -> None:
    values = getattr(contents, CONTENTS_FIELD[tensor.datatype])
    flat = np.asarray(tensor.data).reshape(-1)
    if tensor.datatype == "BYTES":
        values.extend(_element_bytes(v) for v in flat)
    else:
        values.extend(flat.astype(DATATYPE_TO_NUMPY[tensor.datatype]).tolist())


def response_to_proto(resp: InferResponse, raw: bool = True) -> pb.ModelInferResponse:
    """Encode a response. `raw=True` (what tritonclient reads) puts data in raw_output_contents;
    `raw=False` uses typed contents unless an output is FP16, which has no typed field: the
    protocol does not mix the two, so such a response is sent raw."""
    msg = pb.ModelInferResponse(
        model_name=resp.model_name, model_version=resp.model_version, id=resp.id
    )
    if resp.parameters:
        _set_parameters(msg.parameters, resp.parameters)
    for tensor in resp.outputs:
        if tensor.datatype not in DATATYPE_TO_NUMPY:
            raise ValueError(f"output {tensor.name!r} has unknown datatype {tensor.datatype!r}")
    raw = raw or any(t.datatype not in CONTENTS_FIELD for t in resp.outputs)
    for tensor in resp.outputs:
        out = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.parameters:
            _set_parameters(out.parameters, tensor.parameters)
        if raw:
            msg.raw_output_contents.append(tensor_to_raw(tensor))
        else:
            _fill_contents(out.contents, tensor)
    return msg


# -- metadata and configuration ------------------------------------------------------------


def tensor_metadata(
    spec: TensorSpec, max_batch_size: int = 0
) -> pb.ModelMetadataResponse.TensorMetadata:
    """A tensor's metadata; the batch axis shows as -1 in front when `max_batch_size > 0`."""
    batch = [-1] if max_batch_size > 0 else []
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=batch + list(spec.dims)
    )


def model_metadata_to_proto(
    name: str,
    versions: Iterable[int | str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int = 0,
) -> pb.ModelMetadataResponse:
    """A ModelMetadataResponse. The specs' dims are sent as they are unless `max_batch_size > 0`
    asks to add the batch axis (pass 0 when the dims already include it)."""
    return pb.ModelMetadataResponse(
        name=name,
        versions=[str(v) for v in versions],
        platform=platform,
        inputs=[tensor_metadata(s, max_batch_size) for s in inputs],
        outputs=[tensor_metadata(s, max_batch_size) for s in outputs],
    )


def model_config_to_proto(
    config: ModelConfig,
    policy: VersionPolicy | None = None,
    parameters: Mapping[str, str] | None = None,
) -> mc.ModelConfig:
    """Our config.json as Triton's ModelConfig (dims without the batch axis, as in Triton).

    `policy` (the server's version policy) becomes the config's version policy; without it
    the policy is Triton's default, the latest version. `parameters` (a version's metadata,
    e.g. dp_epsilon) go into the free-form parameters map as strings.
    """
    msg = mc.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend="onnxruntime",
        max_batch_size=config.max_batch_size,
        input=[
            mc.ModelInput(name=s.name, data_type=DATATYPE_TO_CONFIG[s.datatype], dims=s.dims)
            for s in config.inputs
        ],
        output=[
            mc.ModelOutput(name=s.name, data_type=DATATYPE_TO_CONFIG[s.datatype], dims=s.dims)
            for s in config.outputs
        ],
        instance_group=[
            mc.ModelInstanceGroup(count=config.instance_count, kind=mc.ModelInstanceGroup.KIND_CPU)
        ],
    )
    if policy is None or policy.kind == "latest":
        msg.version_policy.latest.num_versions = 1 if policy is None else policy.latest_n
    elif policy.kind == "all":
        msg.version_policy.all.SetInParent()
    else:
        msg.version_policy.specific.versions.extend(policy.versions)
    if config.max_batch_size > 0:  # as in Triton, a model that cannot batch has no batcher
        ours, theirs = config.dynamic_batching, msg.dynamic_batching
        theirs.preferred_batch_size.extend(ours.preferred_batch_sizes)
        theirs.max_queue_delay_microseconds = ours.max_queue_delay_us
        theirs.default_queue_policy.max_queue_size = ours.max_queue_size
    # headrace extras ride in Triton's free-form parameters map, as JSON strings.
    if config.preprocessing is not None:
        msg.parameters["preprocessing"].string_value = config.preprocessing.model_dump_json()
    if config.labels:
        msg.parameters["labels"].string_value = json.dumps(config.labels)
    for key, value in (parameters or {}).items():
        msg.parameters[key].string_value = value
    return msg
