"""The JSON decode fast path (`model_validate_json`) gives what the explaining path gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streams.codec import RecordRejected, _validate_json_slowly, decode_request

BODY = {
    "request_id": "r-7",
    "model": "lenet5",
    "version": "2",
    "inputs": [
        {"name": "input", "datatype": "UINT8", "shape": [1, 2, 2], "data": [[1, 2], [3, 4]]}
    ],
    "outputs": [{"name": "logits", "binary_data": False}],
    "parameters": {"p": 1},
    "created_at": 1700000000.5,
    "deadline": 4102444800.0,
}


def test_fast_path_matches_the_slow_path() -> None:
    value = json.dumps(BODY).encode()
    decoded = decode_request(b"r-7", value, None)
    request = decoded.request
    assert request.id == "r-7" and request.model_name == "lenet5" and request.model_version == "2"
    assert request.inputs[0].datatype == "UINT8" and request.inputs[0].shape == (1, 2, 2)
    np.testing.assert_array_equal(request.inputs[0].data, np.array([[[1, 2], [3, 4]]], np.uint8))
    assert request.requested_outputs == ["logits"] and request.parameters == {"p": 1}
    assert decoded.created_at == 1700000000.5 and decoded.deadline_unix == 4102444800.0
    slow = _validate_json_slowly(b"r-7", value)
    assert slow.model_dump() == _validate_json_slowly(None, value).model_dump()


def test_missing_request_id_still_comes_from_the_key() -> None:
    body = {k: v for k, v in BODY.items() if k != "request_id"}
    assert decode_request(b"from-key", json.dumps(body).encode(), None).request.id == "from-key"
    with pytest.raises(RecordRejected) as caught:
        decode_request(None, json.dumps(body).encode(), None)
    assert caught.value.reason == "missing_request_id"


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"{not json", "not_json"), (b"[1, 2]", "invalid_schema"), (b"\xff\xfe", "not_json")],
)
def test_bad_json_keeps_its_reason(value: bytes, reason: str) -> None:
    with pytest.raises(RecordRejected) as caught:
        decode_request(b"k", value, None)
    assert caught.value.reason == reason
