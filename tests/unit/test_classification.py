"""Triton's classification extension on its own: which classes, in which order, how written,
and which requests are refused."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from headrace.errors import InvalidInput
from protos import grpc_service_pb2 as pb
from serving.classification import check_classifiable, class_counts, top_classes
from serving.grpc_convert import request_from_proto
from serving.model_config import ModelConfig, TensorSpec
from streams.codec import decode_request

SCORES = np.array([[0.1, 0.7, 0.2, 0.7], [3.0, -1.0, 2.0, 0.0]], np.float32)


def _texts(array: np.ndarray) -> list[Any]:
    return np.vectorize(bytes.decode, otypes=[object])(array).tolist()


def test_top_classes_best_first_ties_to_the_lower_index() -> None:
    got = top_classes(SCORES, 3, [], batched=True)
    assert got.shape == (2, 3) and got.dtype == np.object_
    assert _texts(got) == [
        ["0.700000:1", "0.700000:3", "0.200000:2"],
        ["3.000000:0", "2.000000:2", "0.000000:3"],
    ]


def test_labels_are_appended_where_the_config_has_one() -> None:
    got = top_classes(SCORES[:1], 2, ["a", "b"], batched=True)  # index 3 has no label
    assert _texts(got) == [["0.700000:1:b", "0.700000:3"]]


def test_more_classes_than_there_are_gives_them_all() -> None:
    assert top_classes(SCORES, 10, [], batched=True).shape == (2, 4)


def test_without_a_batch_axis_the_sample_is_the_whole_output() -> None:
    got = top_classes(SCORES, 2, [], batched=False)  # 8 scores of one sample
    assert _texts(got) == ["3.000000:4", "2.000000:6"]


def test_unsigned_scores_are_ranked_as_numbers() -> None:
    got = top_classes(np.array([[0, 200, 7]], np.uint8), 2, [], batched=True)
    assert _texts(got) == [["200.000000:1", "7.000000:2"]]


def test_class_counts_read_the_parameter() -> None:
    outputs = [("a", {"classification": 3}), ("b", {}), ("c", {"classification": 0})]
    assert class_counts(outputs) == {"a": 3}


@pytest.mark.parametrize("value", [-1, 2.5, "3", True])
def test_class_counts_refuse_what_is_not_a_count(value: object) -> None:
    with pytest.raises(InvalidInput, match="output 'a': parameter 'classification'"):
        class_counts([("a", {"classification": value})])


def test_outputs_without_scores_cannot_be_classified() -> None:
    config = ModelConfig(
        name="m",
        max_batch_size=4,
        inputs=[TensorSpec(name="x", datatype="FP32", dims=[2])],
        outputs=[TensorSpec(name="names", datatype="BYTES", dims=[2])],
    )
    with pytest.raises(InvalidInput, match="output 'names' is BYTES"):
        check_classifiable(config, {"names": 1})


def test_both_transports_carry_the_class_count() -> None:
    msg = pb.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    msg.outputs.add(name="logits").parameters["classification"].int64_param = 2
    assert request_from_proto(msg).class_counts == {"logits": 2}

    body = {
        "request_id": "r-1",
        "model": "m",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}],
        "outputs": [{"name": "logits", "parameters": {"classification": 2}}],
    }
    decoded = decode_request(b"r-1", json.dumps(body).encode(), None)
    assert decoded.request.class_counts == {"logits": 2}
