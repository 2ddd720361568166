"""Requests written to break the server, against a real model manager and dataplane (no
broker, no network): a version string no int() should meet, names and ids megabytes long.
Each gets its own refusal; nothing escapes as a server fault, on the Kafka path every
record still gets one outcome small enough to produce, and a gRPC status message stays
small enough for a client to take."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from unsafe_files import identity_model

from headrace.errors import HeadraceError, InvalidInput, ModelNotFound
from protos import grpc_service_pb2 as pb
from serving.dataplane import DataPlane
from serving.grpc_errors import MAX_MESSAGE_BYTES, client_message
from serving.grpc_servicer import InferenceServicer
from serving.model_config import ModelConfig, TensorSpec
from serving.model_manager import ModelManager
from serving.repository import ModelRepository
from streams.codec import MAX_RESULT_BYTES
from streams.inference import Outcome, SourceRecord, handle_batch
from streams.messages import PROTOBUF_CONTENT_TYPE

# Versions that name no version: int() of more than 4,300 digits raises ValueError; digits
# of other scripts are decimal to str.isdecimal; the rest are not integers at all.
NO_VERSION = ["9" * 5000, "1" * 19, "１", "١", "1e3", "-1", "+1", "0x1", "1.0"]
HUGE = 2_000_000


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    config = ModelConfig(
        name="m",
        max_batch_size=4,
        inputs=[TensorSpec(name="input", dims=[4])],
        outputs=[TensorSpec(name="out", dims=[4])],
    )
    model_file = identity_model(root.parent / "identity.onnx")
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


class _Context:
    """The one thing the servicer asks of a gRPC context for a unary call."""

    def time_remaining(self) -> float | None:
        return None


def _bytes_request(elements: int) -> pb.ModelInferRequest:
    """A BYTES input of `elements` 2-byte elements, for model m, which takes FP32."""
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="input", datatype="BYTES", shape=[elements])
    message.raw_input_contents.append((struct.pack("<I", 2) + b"ab") * elements)
    return message


def _peak_bytes(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(HeadraceError):
            run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_bytes_input_the_model_does_not_take_is_refused_before_its_data_is_decoded(
    dataplane: DataPlane, loop: asyncio.AbstractEventLoop
) -> None:
    """Before: the 12 MB message became 2,000,000 Python bytes objects (~90 MB; a 60 MB
    message, 1.3 GB and 5 s of the event loop) before validation refused its datatype."""
    servicer = InferenceServicer(dataplane)
    request = _bytes_request(2_000_000)
    with pytest.raises(InvalidInput, match="expected datatype FP32, got BYTES"):
        loop.run_until_complete(servicer.ModelInfer(request, _Context()))  # type: ignore[arg-type]
    peak = _peak_bytes(
        lambda: loop.run_until_complete(servicer.ModelInfer(request, _Context()))  # type: ignore[arg-type]
    )
    assert peak < 2 * request.ByteSize(), peak  # a copy of the raw data, no more


def test_a_binary_kafka_record_with_such_an_input_is_refused_before_it_is_decoded(
    dataplane: DataPlane, loop: asyncio.AbstractEventLoop
) -> None:
    """Before: each 4 MiB record became ~700,000 bytes objects, held until the batch ran
    (64 such records took a worker from 140 MB to 2.5 GB)."""
    value = _bytes_request(600_000).SerializeToString()
    records = [_record(i, f"b{i}".encode(), value, binary=True) for i in range(4)]
    outcomes: list[Outcome] = []
    peak = _peak_bytes(
        lambda: outcomes.extend(loop.run_until_complete(handle_batch(records, dataplane)))
    )
    assert [o.kind for o in outcomes] == ["dlq"] * 4
    dlq = json.loads(outcomes[0].value)
    assert (dlq["error_code"], dlq["stage"]) == ("invalid_input", "validate")
    assert dlq["message"] == "input 'input': expected datatype FP32, got BYTES"
    assert peak < 2 * len(value) * len(records), peak  # copies of the raw data, no more


@pytest.mark.parametrize("depth", [900, 100_000])
def test_deeply_nested_json_is_the_records_fault(
    dataplane: DataPlane, loop: asyncio.AbstractEventLoop, depth: int
) -> None:
    """Before: RecursionError (in json.loads, or in flattening the data) reached the worker's
    catch-all: a DLQ record 'internal', a traceback in the log, and the critical alert
    HeadraceStreamInternalErrors, which says a bug, for a producer's malformed record."""
    nested = b"[" * depth + b"1.0" + b"]" * depth
    value = _json("deep").replace(b"[1.0, 1.0, 1.0, 1.0]", nested)
    records = [_record(0, b"deep", value), _record(1, b"good", _json("good"))]
    deep, good = loop.run_until_complete(handle_batch(records, dataplane))
    assert (deep.kind, deep.reason, good.kind) == ("dlq", "invalid_schema", "result")
    assert "nests too deeply" in json.loads(deep.value)["message"]


@pytest.mark.parametrize("field", ["deadline", "created_at", "data", "shape"])
def test_a_number_no_int_can_read_is_the_records_fault(
    dataplane: DataPlane, loop: asyncio.AbstractEventLoop, field: str
) -> None:
    """Before: json.loads raised ValueError (more than 4,300 digits) out of the batch; the
    stream worker stopped, and stopped again on the same record after every restart."""
    big = b"9" * 5000
    value = _json("big")
    if field in ("deadline", "created_at"):
        value = value.replace(b'"model"', b'"' + field.encode() + b'": ' + big + b', "model"')
    else:
        old = b'"data": [1.0' if field == "data" else b'"shape": [1'
        value = value.replace(old, old.split(b"[")[0] + b"[" + big)
    assert big in value
    records = [_record(0, b"big", value), _record(1, b"good", _json("good"))]
    big_one, good = loop.run_until_complete(handle_batch(records, dataplane))
    assert (big_one.kind, big_one.reason, good.kind) == ("dlq", "invalid_schema", "result")
    assert "more than 4,300 digits" in json.loads(big_one.value)["message"]
