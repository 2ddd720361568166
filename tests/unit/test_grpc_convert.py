"""serving.grpc_convert: protobuf <-> serving.types, against hand-built messages and tritonclient.

tritonclient's generated modules cannot be imported beside ours (both declare
`inference.*` in protobuf's default descriptor pool), so tritonclient builds
requests and reads responses in a subprocess and bytes cross between the two.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format

from headrace.errors import InvalidInput
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from serving.grpc_convert import (
    CONTENTS_FIELD,
    DATATYPE_TO_CONFIG,
    DecodeLimits,
    model_config_to_proto,
    model_metadata_to_proto,
    request_from_proto,
    response_to_proto,
    tensor_metadata,
)
from serving.model_config import DynamicBatchingConfig, ModelConfig, TensorSpec
from serving.types import DATATYPE_TO_NUMPY, InferResponse, InferTensor
from serving.version_policy import VersionPolicy

pytestmark = pytest.mark.unit

DATATYPES = list(DATATYPE_TO_NUMPY)
TYPED = [d for d in DATATYPES if d != "FP16"]
Tensor = pb.ModelInferRequest.InferInputTensor


def sample(datatype: str) -> np.ndarray:
    """A 2x3 array of `datatype` holding its extremes."""
    if datatype == "BYTES":
        rows = [[b"", b"a", b"\x00\xff\x00"], ["é".encode(), b"x" * 300, b"z"]]
        array = np.empty((2, 3), dtype=np.object_)
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                array[i, j] = value
        return array
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = DATATYPE_TO_NUMPY[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, 7, info.max - 1]], dtype=dtype)
    finfo = np.finfo(dtype)
    return np.array([[0.0, -1.5, finfo.max], [finfo.tiny, -np.inf, np.nan]], dtype=dtype)


def raw_bytes(datatype: str, array: np.ndarray) -> bytes:
    """The protocol's raw encoding, written out independently of the code under test."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in array.flat)
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def tensor(name: str, datatype: str, shape: Sequence[int], **contents: Any) -> Tensor:
    message = Tensor(name=name, datatype=datatype, shape=shape)
    if contents:
        message.contents.CopyFrom(pb.InferTensorContents(**contents))
    return message


def request(*inputs: Tensor, raw: Sequence[bytes] = ()) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", inputs=inputs, raw_input_contents=raw)


def typed_tensor(name: str, datatype: str, array: np.ndarray) -> Tensor:
    values = array.reshape(-1).tolist()
    return tensor(name, datatype, array.shape, **{CONTENTS_FIELD[datatype]: values})


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


# -- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_contents_decode(datatype: str) -> None:
    array = sample(datatype)
    decoded = request_from_proto(request(typed_tensor("x", datatype, array)))
    (got,) = decoded.inputs
    assert (got.name, got.datatype, got.shape) == ("x", datatype, (2, 3))
    assert_same(got.data, array)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_raw_contents_decode(datatype: str) -> None:
    array = sample(datatype)
    msg = request(tensor("x", datatype, array.shape), raw=[raw_bytes(datatype, array)])
    (got,) = request_from_proto(msg).inputs
    assert_same(got.data, array)


def test_raw_input_is_a_read_only_view_not_a_copy() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    msg = request(tensor("x", "FP32", [3, 4]), raw=[array.tobytes()])
    (got,) = request_from_proto(msg).inputs
    assert not got.data.flags.owndata and not got.data.flags.writeable
    assert isinstance(got.data.base, np.ndarray) and isinstance(got.data.base.base, bytes)


def test_several_raw_inputs_zero_sized_and_scalar() -> None:
    expected: list[np.ndarray] = [
        np.zeros((0, 4), np.float32),
        np.array(5, np.int64),
        np.empty((2, 0), np.object_),
    ]
    msg = request(
        tensor("a", "FP32", [0, 4]),
        tensor("b", "INT64", []),
        tensor("c", "BYTES", [2, 0]),
        raw=[b"", raw_bytes("INT64", expected[1]), b""],
    )
    got = request_from_proto(msg).inputs
    assert [t.name for t in got] == ["a", "b", "c"]
    for tensor_, array in zip(got, expected, strict=True):
        assert_same(tensor_.data, array)


@pytest.mark.parametrize(
    ("datatype", "raw"), [(d, True) for d in DATATYPES] + [(d, False) for d in TYPED]
)
def test_the_servers_input_check_runs_before_any_data_is_read(datatype: str, raw: bool) -> None:
    """Typed contents, BYTES and BOOL read the data to decode it, so the server's check
    runs first; the other raw inputs decode as views that read nothing, and skip it (the
    server checks them before queueing)."""
    array = sample(datatype)
    if raw:
        msg = request(tensor("x", datatype, array.shape), raw=[raw_bytes(datatype, array)])
    else:
        msg = request(typed_tensor("x", datatype, array))
    seen: list[tuple[str, str, list[tuple[str, str, tuple[int, ...]]]]] = []

    def check(model: str, version: str, layouts: Sequence[Any]) -> None:
        seen.append((model, version, [(t.name, t.datatype, t.shape) for t in layouts]))

    decoded = request_from_proto(msg, check_inputs=check)
    assert_same(decoded.inputs[0].data, array)
    reads_data = not raw or datatype in ("BYTES", "BOOL")
    assert seen == ([("m", "", [("x", datatype, array.shape)])] if reads_data else [])


def test_request_fields_and_parameters() -> None:
    msg = request(typed_tensor("x", "INT32", np.array([1, 2], np.int32)))
    msg.model_version, msg.id = "007", "req-9"
    msg.outputs.add(name="logits").parameters["classification"].int64_param = 3
    msg.outputs.add(name="probs")
    msg.parameters["flag"].bool_param = True
    msg.parameters["n"].int64_param = -5
    msg.parameters["s"].string_param = "hi"
    msg.parameters["d"].double_param = 0.5
    msg.parameters["u"].uint64_param = 2**64 - 1
    msg.parameters["unset"].SetInParent()
    msg.inputs[0].parameters["binary_data_size"].int64_param = 8
    decoded = request_from_proto(msg)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "007", "req-9")
    assert decoded.requested_outputs == ["logits", "probs"]
    assert decoded.class_counts == {"logits": 3}
    expected = {"flag": True, "n": -5, "s": "hi", "d": 0.5, "u": 2**64 - 1, "unset": None}
    assert decoded.parameters == expected
    assert decoded.inputs[0].parameters == {"binary_data_size": 8}


# -- invalid requests ----------------------------------------------------------------------

F32x4 = b"\x00" * 16
INVALID: dict[str, tuple[pb.ModelInferRequest, list[str]]] = {
    "empty": (request(), ["empty request"]),
    "unknown-datatype": (request(tensor("x", "FP8", [1], fp32_contents=[1.0])), ["FP8"]),
    "negative-dim": (request(tensor("x", "FP32", [-1, 4]), raw=[F32x4]), ["negative"]),
    "too-many-elements": (request(tensor("x", "INT8", [2**31 + 1]), raw=[b""]), ["element count"]),
    "int64-overflow": (request(tensor("x", "FP32", [2**62, 2**62])), ["element count"]),
    "rank": (request(tensor("x", "FP32", [1] * 40), raw=[b"\0" * 4]), ["40 dims"]),
    "duplicate": (
        request(tensor("x", "FP32", [4]), tensor("x", "FP32", [4]), raw=[F32x4, F32x4]),
        ["2 times"],
    ),
    "raw-and-typed": (
        request(
            tensor("y", "FP32", [4]),
            tensor("x", "FP32", [1], fp32_contents=[1.0]),
            raw=[F32x4, b"\0" * 4],
        ),
        ["typed contents", "raw_input_contents"],
    ),  # fmt: skip
    "raw-missing": (request(tensor("y", "FP32", [4]), tensor("x", "FP32", [4]), raw=[F32x4]), []),
    "raw-extra": (request(tensor("x", "FP32", [4]), raw=[F32x4, F32x4]), ["2 entries"]),
    "raw-size": (request(tensor("x", "FP32", [2, 2]), raw=[b"\0" * 15]), ["raw byte size 15"]),
    "raw-bool": (request(tensor("x", "BOOL", [2]), raw=[b"\x01\x02"]), ["0 or 1"]),
    "bytes-too-small": (request(tensor("x", "BYTES", [3]), raw=[b"\0" * 4]), ["too small"]),
    "bytes-past-end": (
        request(
            tensor("x", "BYTES", [2]), raw=[struct.pack("<I", 1) + b"a" + struct.pack("<I", 9)]
        ),
        ["element 1", "past"],
    ),
    "bytes-left-over": (
        request(tensor("x", "BYTES", [1]), raw=[struct.pack("<I", 1) + b"a" + b"zz"]),
        ["left over"],
    ),
    "typed-count": (request(tensor("x", "FP32", [2, 2], fp32_contents=[1, 2, 3])), ["3 values"]),
    "typed-missing": (request(tensor("x", "FP32", [2])), ["0 values"]),
    "typed-wrong-field": (request(tensor("x", "FP32", [1], int_contents=[1])), ["fp32_contents"]),
    "typed-two-fields": (
        request(tensor("x", "INT32", [1], int_contents=[1], fp32_contents=[1.0])),
        ["fp32_contents"],
    ),
    "typed-fp16": (request(tensor("x", "FP16", [1], fp32_contents=[1.0])), ["raw_input_contents"]),
    "typed-uint8-range": (request(tensor("x", "UINT8", [2], uint_contents=[1, 256])), ["range"]),
    "typed-int16-range": (request(tensor("x", "INT16", [1], int_contents=[-40000])), ["range"]),
}


@pytest.mark.parametrize("case", INVALID)
def test_invalid_request_is_refused_naming_the_input(case: str) -> None:
    msg, fragments = INVALID[case]
    with pytest.raises(InvalidInput) as raised:
        request_from_proto(msg)
    text = str(raised.value)
    if case != "empty":
        assert "'x'" in text
    for fragment in fragments:
        assert fragment in text


def test_element_limit_is_configurable() -> None:
    msg = request(typed_tensor("x", "INT32", np.zeros(12, np.int32)))
    assert request_from_proto(msg, DecodeLimits(max_elements=12)).inputs[0].data.size == 12
    with pytest.raises(InvalidInput, match="element count of 12, above the limit of 10"):
        request_from_proto(msg, DecodeLimits(max_elements=10))


HUGE_CLAIMS = {
    "dims-2**40-squared": (tensor("x", "FP32", [2**40, 2**40]), [b"\0" * 4]),
    "raw-fp32": (tensor("x", "FP32", [2**28, 8]), [b"\0" * 4]),
    "raw-bytes": (tensor("x", "BYTES", [2**30]), [struct.pack("<I", 4) + b"abcd"]),
    "typed-fp64": (tensor("x", "FP64", [2**30], fp64_contents=[1.0]), []),
}


@pytest.mark.parametrize("case", HUGE_CLAIMS)
def test_huge_claimed_shape_is_refused_without_allocating(case: str) -> None:
    input_tensor, raw = HUGE_CLAIMS[case]
    msg = request(input_tensor, raw=raw)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(InvalidInput) as raised:
            request_from_proto(msg)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5 and peak < 1 << 20, (elapsed, peak)
    assert "'x'" in str(raised.value)
    if case == "dims-2**40-squared":
        assert f"element count of {2**80}" in str(raised.value)


# -- encoding ------------------------------------------------------------------------------


def response_of(*tensors: InferTensor) -> InferResponse:
    return InferResponse(model_name="m", model_version="2", outputs=list(tensors), id="r")


def as_request(response: pb.ModelInferResponse) -> pb.ModelInferRequest:
    """A response's outputs sent back as a request's inputs (the wire formats are the same)."""
    msg = pb.ModelInferRequest(model_name="m", raw_input_contents=response.raw_output_contents)
    for out in response.outputs:
        msg.inputs.add(name=out.name, datatype=out.datatype, shape=out.shape).contents.CopyFrom(
            out.contents
        )
    return msg


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_response_round_trip(datatype: str, raw: bool) -> None:
    array = sample(datatype)
    msg = response_to_proto(response_of(InferTensor("y", datatype, (2, 3), array)), raw=raw)
    assert (msg.model_name, msg.model_version, msg.id) == ("m", "2", "r")
    assert (msg.outputs[0].name, msg.outputs[0].datatype, list(msg.outputs[0].shape)) == (
        "y",
        datatype,
        [2, 3],
    )
    sent_raw = raw or datatype == "FP16"  # FP16 has no typed field
    assert bool(msg.raw_output_contents) == sent_raw
    assert msg.outputs[0].HasField("contents") != sent_raw
    if sent_raw:
        assert msg.raw_output_contents[0] == raw_bytes(datatype, array)
    (back,) = request_from_proto(as_request(msg)).inputs
    assert_same(back.data, array)


def test_typed_response_with_fp16_output_is_sent_raw_for_all_outputs() -> None:
    response = response_of(
        InferTensor.from_array("a", np.ones(2, np.float32)),
        InferTensor.from_array("b", np.ones(2, np.float16)),
    )
    msg = response_to_proto(response, raw=False)
    assert len(msg.raw_output_contents) == 2
    assert not any(out.HasField("contents") for out in msg.outputs)


def test_response_parameters_and_str_elements() -> None:
    words = np.array(["é", "ok"], dtype=np.object_)
    response = response_of(InferTensor("w", "BYTES", (2,), words, parameters={"k": 1}))
    response.parameters = {"b": True, "i": -3, "u": 2**63, "f": 0.25, "s": "x", "n": np.int32(4)}
    msg = response_to_proto(response)
    assert msg.raw_output_contents[0] == raw_bytes("BYTES", np.array(["é".encode(), b"ok"]))
    assert msg.outputs[0].parameters["k"].int64_param == 1
    choices = {k: (v.WhichOneof("parameter_choice"), getattr(v, v.WhichOneof("parameter_choice")))
               for k, v in msg.parameters.items()}  # fmt: skip
    assert choices == {
        "b": ("bool_param", True),
        "i": ("int64_param", -3),
        "u": ("uint64_param", 2**63),
        "f": ("double_param", 0.25),
        "s": ("string_param", "x"),
        "n": ("int64_param", 4),
    }


def test_response_refuses_what_the_protocol_cannot_carry() -> None:
    with pytest.raises(TypeError, match="parameter"):
        response_to_proto(InferResponse("m", "1", [], parameters={"x": [1]}))
    with pytest.raises(ValueError, match="unknown datatype"):
        response_to_proto(response_of(InferTensor("y", "FP8", (1,), np.zeros(1))))
    with pytest.raises(TypeError, match="BYTES element"):
        response_to_proto(response_of(InferTensor("y", "BYTES", (1,), np.array([3], object))))


# -- tritonclient --------------------------------------------------------------------------

_TRITONCLIENT = r"""
import base64, io, json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import _utils, service_pb2

def load(text):
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=True)

def dump(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return base64.b64encode(buffer.getvalue()).decode()

job = json.load(sys.stdin)
if job["mode"] == "request":
    inputs = []
    for name, datatype, data in job["inputs"]:
        array = load(data)
        infer_input = grpcclient.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    # The builder InferenceServerClient.infer() sends through, called without a server.
    message = _utils._get_inference_request(
        model_name="digits", inputs=inputs, model_version="3", request_id="req-1",
        outputs=[grpcclient.InferRequestedOutput("logits")], sequence_id=0,
        sequence_start=False, sequence_end=False, priority=7, timeout=1000,
        parameters={"tag": "x", "n": 2, "on": True, "w": 0.5},
    )
    print(base64.b64encode(message.SerializeToString()).decode())
else:
    response = service_pb2.ModelInferResponse.FromString(base64.b64decode(job["response"]))
    result = grpcclient.InferResult(response)
    print(json.dumps({name: dump(result.as_numpy(name)) for name in job["names"]}))
"""


def dump(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return base64.b64encode(buffer.getvalue()).decode()


def tritonclient(job: dict[str, Any]) -> str:
    """Run one job in a subprocess that imports tritonclient.grpc."""
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed (pip install -e '.[dev]')")
    done = subprocess.run(
        [sys.executable, "-c", _TRITONCLIENT], input=json.dumps(job), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tritonclient_request_decodes() -> None:
    inputs = [[f"in_{d}", d, dump(sample(d))] for d in DATATYPES]
    sent = base64.b64decode(tritonclient({"mode": "request", "inputs": inputs}))
    decoded = request_from_proto(pb.ModelInferRequest.FromString(sent))
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("digits", "3", "req-1")
    assert decoded.requested_outputs == ["logits"]
    assert decoded.parameters == {
        "tag": "x", "n": 2, "on": True, "w": 0.5, "priority": 7, "timeout": 1000
    }  # fmt: skip
    assert [(t.name, t.datatype) for t in decoded.inputs] == [(f"in_{d}", d) for d in DATATYPES]
    for got in decoded.inputs:
        assert_same(got.data, sample(got.datatype))


def test_tritonclient_reads_our_response() -> None:
    outputs = [InferTensor(f"out_{d}", d, (2, 3), sample(d)) for d in DATATYPES]
    encoded = response_to_proto(response_of(*outputs)).SerializeToString()
    job = {
        "mode": "response",
        "response": base64.b64encode(encoded).decode(),
        "names": [t.name for t in outputs],
    }
    read = json.loads(tritonclient(job))
    for out in outputs:
        got = np.load(io.BytesIO(base64.b64decode(read[out.name])), allow_pickle=True)
        assert_same(got, out.data)


# -- metadata and configuration ------------------------------------------------------------


def make_config(**update: Any) -> ModelConfig:
    config = ModelConfig(
        name="digits",
        max_batch_size=32,
        inputs=[TensorSpec(name="pixels", dims=[1, 8, 8])],
        outputs=[
            TensorSpec(name="logits", dims=[10]),
            TensorSpec(name="label", datatype="BYTES", dims=[-1]),
        ],
        dynamic_batching=DynamicBatchingConfig(
            max_queue_delay_us=500, preferred_batch_sizes=[8, 16], max_queue_size=64
        ),
        instance_count=3,
    )
    return config.model_copy(update=update)


def test_tensor_and_model_metadata() -> None:
    spec = TensorSpec(name="pixels", datatype="UINT8", dims=[1, 8, 8])
    assert list(tensor_metadata(spec, max_batch_size=32).shape) == [-1, 1, 8, 8]
    assert list(tensor_metadata(spec, max_batch_size=0).shape) == [1, 8, 8]
    config = make_config()
    msg = model_metadata_to_proto(
        "digits", [1, "3"], config.platform, config.inputs, config.outputs, config.max_batch_size
    )
    assert (msg.name, list(msg.versions), msg.platform) == (
        "digits",
        ["1", "3"],
        "onnxruntime_onnx",
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.inputs] == [
        ("pixels", "FP32", [-1, 1, 8, 8])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.outputs] == [
        ("logits", "FP32", [-1, 10]),
        ("label", "BYTES", [-1, -1]),
    ]
    as_given = model_metadata_to_proto("digits", [], "p", [spec], [])
    assert list(as_given.inputs[0].shape) == [1, 8, 8]


def test_model_config_to_proto() -> None:
    msg = model_config_to_proto(make_config())
    assert (msg.name, msg.platform, msg.backend, msg.max_batch_size) == (
        "digits",
        "onnxruntime_onnx",
        "onnxruntime",
        32,
    )
    assert [(t.name, t.data_type, list(t.dims)) for t in msg.input] == [
        ("pixels", mc.TYPE_FP32, [1, 8, 8])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in msg.output] == [
        ("logits", mc.TYPE_FP32, [10]),
        ("label", mc.TYPE_STRING, [-1]),
    ]
    batching = msg.dynamic_batching
    assert msg.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(batching.preferred_batch_size) == [8, 16]
    assert batching.max_queue_delay_microseconds == 500
    assert batching.default_queue_policy.max_queue_size == 64
    assert [(g.count, g.kind) for g in msg.instance_group] == [(3, mc.ModelInstanceGroup.KIND_CPU)]
    assert msg.version_policy.latest.num_versions == 1
    assert (
        model_config_to_proto(make_config(max_batch_size=0)).WhichOneof("scheduling_choice") is None
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (VersionPolicy(), {"latest": {"num_versions": 1}}),
        (VersionPolicy(kind="latest", latest_n=3), {"latest": {"num_versions": 3}}),
        (VersionPolicy(kind="all"), {"all": {}}),
        (VersionPolicy(kind="specific", versions=[1, 3]), {"specific": {"versions": ["1", "3"]}}),
    ],
)
def test_model_config_states_the_servers_version_policy(
    policy: VersionPolicy, expected: dict[str, Any]
) -> None:
    msg = model_config_to_proto(make_config(), policy).version_policy
    assert json_format.MessageToDict(msg, preserving_proto_field_name=True) == expected


def test_every_datatype_has_tritons_config_enum() -> None:
    names = {d: mc.DataType.Name(v) for d, v in DATATYPE_TO_CONFIG.items()}
    assert names == {d: "TYPE_STRING" if d == "BYTES" else f"TYPE_{d}" for d in DATATYPES}
