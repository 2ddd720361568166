"""Kafka message schemas and the OIP JSON conversions they rely on."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from headrace.errors import InvalidInput
from serving.json_convert import request_from_json, response_to_json, tensor_from_json
from serving.types import InferResponse, InferTensor
from streams.messages import (
    DLQRecord,
    InferenceRequestMessage,
    InferenceResultMessage,
    TensorJSON,
)


def _tensor(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "input",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [1, 2, 3, 4],
    }
    body.update(overrides)
    return body


def test_request_round_trip_through_json() -> None:
    message = InferenceRequestMessage(request_id="r-1", model="m", inputs=[_tensor()])  # type: ignore[list-item]
    decoded = InferenceRequestMessage.model_validate_json(message.model_dump_json())
    request = request_from_json(decoded.model_dump(), decoded.model)
    (tensor,) = request.inputs
    assert tensor.data.dtype == np.float32 and tensor.data.shape == (2, 2)
    assert tensor.data.tolist() == [[1, 2], [3, 4]]


def test_nested_data_is_flattened() -> None:
    tensor = tensor_from_json(_tensor(data=[[1, 2], [3, 4]]))
    assert tensor.data.tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_tensor(datatype="FP128"), "unknown datatype"),
        (_tensor(shape=[2, -2]), "non-negative"),
        (_tensor(shape=[3, 2]), "needs 6 values"),
        (_tensor(datatype="INT8", data=[1, 2, 3, 300]), "does not fit INT8"),
        (_tensor(shape=[1 << 20, 1 << 20], data=[]), "too many"),
        (_tensor(name=""), "non-empty 'name'"),
        (_tensor(data=["1", "2", "3", "4"]), "FP32 data cannot hold string values"),
        (_tensor(data=[True, 2, 3, 4]), "FP32 data cannot hold boolean values"),
        (_tensor(data=[1, 2, None, 4]), "cannot hold null values"),
        (_tensor(data=[1, 2, [3], 4]), "cannot hold array values"),
        (_tensor(datatype="INT32", data=[1, 2.5, 3, 4]), "INT32 data cannot hold fractional"),
        (_tensor(datatype="UINT8", data=[1, 2, 3, 1.0]), "UINT8 data cannot hold fractional"),
        (_tensor(datatype="BOOL", data=[1, 0, 1, 0]), "BOOL data cannot hold integer"),
        (_tensor(datatype="BYTES", data=["a", 2, "c", "d"]), "BYTES data cannot hold integer"),
        (_tensor(shape=[True, 4], data=[1, 2, 3, 4]), "non-negative integers"),
        (_tensor(shape=[1.0, 4], data=[1, 2, 3, 4]), "non-negative integers"),
    ],
)
def test_bad_tensors_name_the_problem(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        tensor_from_json(body)


def test_data_of_the_right_json_types_is_accepted() -> None:
    assert tensor_from_json(_tensor(data=[1, 2.5, 3, 4])).data.dtype == np.float32
    assert tensor_from_json(_tensor(datatype="INT64", data=[1, -2, 3, 4])).data.sum() == 6
    flags = tensor_from_json(_tensor(datatype="BOOL", data=[True, False, True, True]))
    assert flags.data.tolist() == [[True, False], [True, True]]
    words = tensor_from_json(_tensor(datatype="BYTES", data=["a", "b", "c", "d"]))
    assert words.data.reshape(-1).tolist() == [b"a", b"b", b"c", b"d"]


@pytest.mark.parametrize("shape", ["[1.0, 4]", "[true, 4]", '["1", 4]'])
def test_a_message_shape_must_hold_json_integers(shape: str) -> None:
    body = '{"name": "x", "datatype": "FP32", "shape": ' + shape + ', "data": [1, 2, 3, 4]}'
    with pytest.raises(ValidationError):
        TensorJSON.model_validate_json(body)


def test_request_needs_inputs_with_distinct_names() -> None:
    with pytest.raises(InvalidInput, match="no inputs"):
        request_from_json({"inputs": []}, "m")
    with pytest.raises(InvalidInput, match="duplicate"):
        request_from_json({"inputs": [_tensor(), _tensor()]}, "m")


def test_request_message_requires_id_model_and_inputs() -> None:
    with pytest.raises(ValidationError) as info:
        InferenceRequestMessage.model_validate({"model": "", "inputs": []})
    fields = {error["loc"][0] for error in info.value.errors()}
    assert {"request_id", "model", "inputs"} <= fields


def test_result_and_dlq_records_serialise() -> None:
    response = InferResponse(
        model_name="m",
        model_version="2",
        outputs=[InferTensor.from_array("logits", np.array([[0.5, 1.5]], np.float32))],
        id="r-1",
    )
    body = response_to_json(response)
    result = InferenceResultMessage(
        request_id="r-1", model="m", model_version="2", outputs=body["outputs"]
    )
    again = InferenceResultMessage.model_validate_json(result.model_dump_json())
    assert again.outputs[0].data == [0.5, 1.5] and again.outputs[0].shape == [1, 2]
    record = DLQRecord(request_id=None, error_code="invalid_input", message="bad", stage="decode")
    assert DLQRecord.model_validate_json(record.model_dump_json()).stage == "decode"
