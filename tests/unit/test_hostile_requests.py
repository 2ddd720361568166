"""Requests written to break the server, against a real model manager and dataplane (no
broker, no network): a version string no int() should meet, names and ids megabytes long.
Each gets its own refusal; nothing escapes as a server fault, on the Kafka path every
record still gets one outcome small enough to produce, and a gRPC status message stays
small enough for a client to take."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from headrace.errors import ModelNotFound
from protos import grpc_service_pb2 as pb
from serving.dataplane import DataPlane
from serving.grpc_errors import MAX_MESSAGE_BYTES, client_message
from serving.model_config import ModelConfig, TensorSpec
from serving.model_manager import ModelManager
from serving.repository import ModelRepository
from streams.codec import MAX_RESULT_BYTES
from streams.inference import SourceRecord, handle_batch
from streams.messages import PROTOBUF_CONTENT_TYPE

# Versions that name no version: int() of more than 4,300 digits raises ValueError; digits
# of other scripts are decimal to str.isdecimal; the rest are not integers at all.
NO_VERSION = ["9" * 5000, "1" * 19, "１", "١", "1e3", "-1", "+1", "0x1", "1.0"]
HUGE = 2_000_000


def _identity_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["out"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    config = ModelConfig(
        name="m",
        max_batch_size=4,
        inputs=[TensorSpec(name="input", dims=[4])],
        outputs=[TensorSpec(name="out", dims=[4])],
    )
    model_file = _identity_model(root.parent / "identity.onnx")
    ModelRepository(root).publish(config, model_file, architecture="test")
    return root


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def dataplane(repository: Path, loop: asyncio.AbstractEventLoop) -> Iterator[DataPlane]:
    manager = ModelManager(ModelRepository(repository), batching=False)
    loop.run_until_complete(manager.load_all())
    yield DataPlane(manager)
    loop.run_until_complete(manager.close())


@pytest.mark.parametrize("version", NO_VERSION, ids=lambda v: repr(v[:12]))
def test_a_version_string_that_names_no_version_is_not_found(
    dataplane: DataPlane, version: str
) -> None:
    assert not dataplane.model_ready("m", version)
    for lookup in (dataplane.model_metadata, dataplane.model_config, dataplane.statistics):
        with pytest.raises(ModelNotFound):
            lookup("m", version)


def test_a_version_spelled_with_spaces_or_zeros_reports_its_statistics(
    dataplane: DataPlane,
) -> None:
    for version in ("1", "01", " 1", "1\n"):
        assert dataplane.model_ready("m", version)
        assert list(dataplane.statistics("m", version)) == [("m", "1")], version


def _json(request_id: str, **fields: object) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1.0] * 4}
    body = {"request_id": request_id, "model": "m", "inputs": [tensor], **fields}
    return json.dumps(body).encode()


def _binary(**fields: str) -> bytes:
    message = pb.ModelInferRequest(model_name="m", **fields)
    message.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    message.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    return message.SerializeToString()


def _record(offset: int, key: bytes | None, value: bytes, binary: bool = False) -> SourceRecord:
    headers = [("content-type", PROTOBUF_CONTENT_TYPE.encode())] if binary else []
    return SourceRecord("inference-requests", 0, offset, key, value, headers, time.time())


def test_a_version_no_int_can_hold_goes_to_the_dlq_and_the_batch_goes_on(
    dataplane: DataPlane, loop: asyncio.AbstractEventLoop
) -> None:
    """Before: int() of the 5,000 digits raised ValueError out of the batch; the worker
    stopped, and stopped again on the same record after every restart."""
    records = [
        _record(0, b"v", _json("v", version="9" * 5000)),
        _record(1, b"bv", _binary(model_version="9" * 5000), binary=True),
        _record(2, b"good", _json("good")),
    ]
    outcomes = loop.run_until_complete(handle_batch(records, dataplane))
    assert [o.kind for o in outcomes] == ["dlq", "dlq", "result"]
    assert [json.loads(o.value)["error_code"] for o in outcomes[:2]] == ["model_not_found"] * 2


def test_hostile_kafka_records_each_get_one_outcome_that_can_be_produced(
    dataplane: DataPlane, loop: asyncio.AbstractEventLoop
) -> None:
    """Before: each gave a DLQ record over a megabyte (quoting the model name, the version,
    the reply topic or the output name, or keyed by a key of megabytes), which the producer
    refused: the worker stopped, and stopped again on the same record after every restart."""
    hostile = [
        _record(0, b"n", _json("n", outputs=[{"name": "o" * HUGE}])),
        _record(1, b"r", _json("r", reply_to="r" * HUGE)),
        _record(2, b"m", _json("m", model="m" * HUGE)),
        _record(3, b"x", _json("x", version="x" * HUGE)),
        _record(4, b"K" * HUGE, _binary(), binary=True),
        _record(5, None, _binary(id="I" * HUGE), binary=True),
        _record(6, b"K" * HUGE, _json("k", version="x" * HUGE)),
    ]
    good = _record(len(hostile), b"good", _json("good"))
    outcomes = loop.run_until_complete(handle_batch([*hostile, good], dataplane))
    assert [o.kind for o in outcomes] == ["dlq"] * len(hostile) + ["result"]
    for outcome in outcomes:
        assert len(outcome.key or b"") + len(outcome.value) < MAX_RESULT_BYTES
    for outcome in outcomes[4:6]:  # no usable id: the DLQ record names the source record
        assert (outcome.request_id, outcome.key) == (None, None)
        assert json.loads(outcome.value)["source"]["offset"] == outcomes.index(outcome)
    assert (outcomes[6].request_id, outcomes[6].key) == ("k", b"k")
    assert outcomes[-1].key == b"good"


def test_status_messages_are_cut_to_what_a_client_accepts() -> None:
    assert client_message("short") == "short"
    for text in ("x" * HUGE, "界" * HUGE):
        cut = client_message(text)
        assert len(cut.encode()) < MAX_MESSAGE_BYTES + 64
        assert cut.endswith("more characters cut)")
