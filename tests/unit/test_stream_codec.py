"""Kafka record decoding: every unusable record is rejected with its DLQ reason."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from headrace.errors import InvalidInput
from protos import grpc_service_pb2 as pb
from serving.types import InferResponse, InferTensor
from streams.codec import (
    MAX_PAYLOAD_BYTES,
    RecordRejected,
    decode_request,
    dlq_record,
    encode_result,
)
from streams.messages import DLQRecord, InferenceResultMessage, RecordRef, Timings

PROTOBUF = [("content-type", b"application/x-protobuf; messageType=inference.ModelInferRequest")]


def _body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "request_id": "r-1",
        "model": "m",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.5]}],
        "reply_to": "my-results",
    }
    body.update(overrides)
    return body


def test_json_request_decodes() -> None:
    decoded = decode_request(b"r-1", json.dumps(_body()).encode(), None)
    assert decoded.request.id == "r-1" and decoded.request.model_name == "m"
    assert decoded.reply_to == "my-results"
    assert decoded.request.inputs[0].data.tolist() == [[0.5, 1.5]]


def test_oips_own_id_is_accepted_and_names_a_request_without_request_id_or_key() -> None:
    oip = {k: v for k, v in _body(id="oip-7").items() if k != "request_id"}
    assert decode_request(None, json.dumps(oip).encode(), None).request.id == "oip-7"
    assert decode_request(b"key-1", json.dumps(oip).encode(), None).request.id == "key-1"
    both = _body(id="oip-7")
    assert decode_request(None, json.dumps(both).encode(), None).request.id == "r-1"


def test_request_id_may_come_from_the_key() -> None:
    body = _body()
    del body["request_id"]
    assert decode_request(b"from-key", json.dumps(body).encode(), None).request.id == "from-key"


def test_protobuf_request_decodes() -> None:
    message = pb.ModelInferRequest(model_name="m", model_version="2")
    message.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    message.raw_input_contents.append(np.array([0.5, 1.5], "<f4").tobytes())
    decoded = decode_request(b"r-9", message.SerializeToString(), PROTOBUF)
    assert (decoded.request.id, decoded.request.model_version) == ("r-9", "2")
    assert decoded.request.inputs[0].data.tolist() == [[0.5, 1.5]]


@pytest.mark.parametrize(
    ("key", "value", "headers", "reason"),
    [
        (b"r", None, None, "tombstone"),
        (b"r", b"{not json", None, "not_json"),
        (b"r", b"\xff\xfe", None, "not_json"),
        (b"r", json.dumps({"model": "m"}).encode(), None, "invalid_schema"),
        (None, json.dumps({k: v for k, v in _body().items() if k != "request_id"}).encode(), None,
         "missing_request_id"),
        (b"r", json.dumps(_body(extra=1)).encode(), None, "invalid_schema"),
        (b"r", b"x" * (MAX_PAYLOAD_BYTES + 1), None, "payload_too_large"),
        (b"r", b"{}", [("content-type", b"text/csv")], "unsupported_content_type"),
        (b"r", json.dumps(_body(created_at=float("nan"))).encode(), None, "invalid_schema"),
        (b"r", json.dumps(_body(deadline=float("inf"))).encode(), None, "invalid_schema"),
        (b"r", b"\x0a\xff", PROTOBUF, "not_protobuf"),
        (None, pb.ModelInferRequest(model_name="m").SerializeToString(), PROTOBUF,
         "missing_request_id"),
    ],
)  # fmt: skip
def test_unusable_records_are_rejected_with_a_reason(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None, reason: str
) -> None:
    with pytest.raises(RecordRejected) as info:
        decode_request(key, value, headers)
    assert info.value.reason == reason and info.value.stage == "decode"
    assert info.value.message


def test_bad_tensor_is_invalid_input() -> None:
    body = _body(inputs=[{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1]}])
    with pytest.raises(RecordRejected) as info:
        decode_request(b"r", json.dumps(body).encode(), None)
    assert info.value.reason == "invalid_input" and "needs 3 values" in info.value.message


def test_rejection_survives_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(RecordRejected("bad", "not_json", "decode")))
    assert (error.message, error.reason, error.stage) == ("bad", "not_json", "decode")


def test_result_and_dlq_values() -> None:
    response = InferResponse(
        model_name="m",
        model_version="1",
        outputs=[InferTensor.from_array("logits", np.array([[1.0, 2.0]], np.float32))],
    )
    result = InferenceResultMessage.model_validate_json(
        encode_result(response, "r-1", Timings(queue_s=0.01, batch_size=4), created_at=5.0)
    )
    assert result.request_id == "r-1" and result.outputs[0].data == [1.0, 2.0]
    assert result.timings.batch_size == 4 and result.request_created_at == 5.0

    source = RecordRef(topic="inference-requests", partition=2, offset=17)
    small = DLQRecord.model_validate_json(
        dlq_record("r-1", InvalidInput("bad shape"), "validate", b"{}", source)
    )
    assert (small.error_code, small.stage, small.payload, small.source) == (
        "invalid_input", "validate", "{}", source,
    )  # fmt: skip
    binary = DLQRecord.model_validate_json(
        dlq_record(None, InvalidInput("x"), "decode", b"\xff\x00", None)
    )
    assert binary.payload_encoding == "base64"
    assert base64.b64decode(binary.payload or "") == b"\xff\x00"
    large = DLQRecord.model_validate_json(
        dlq_record("r", InvalidInput("x"), "decode", b"x" * 100_000, source)
    )
    assert large.payload is None and large.source == source


def test_a_request_written_by_us_carries_no_id_field() -> None:
    from streams.producer import encode_sample

    value, _ = encode_sample("r-1", "m", np.zeros((1, 2, 2), np.uint8), "json")
    assert "id" not in json.loads(value) and json.loads(value)["request_id"] == "r-1"
