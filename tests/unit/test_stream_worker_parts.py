"""The stream worker's parts without a broker: the offset gate, one batch's outcomes and
producing them (retries)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

import numpy as np
import pytest

from headrace.errors import ModelNotFound
from serving.model_config import ModelConfig, PreprocessingSpec, TensorSpec
from serving.types import InferRequest, InferResponse, InferTensor, Timings
from serving.validation import validate_request
from streams import delivery
from streams.codec import MAX_RESULT_BYTES
from streams.inference import Outcome, SourceRecord, handle_batch
from streams.offsets import OffsetGate

# -- OffsetGate ----------------------------------------------------------------------------


def test_gate_holds_a_later_batch_until_earlier_records_finish() -> None:
    async def scenario() -> list[str]:
        gate, order = OffsetGate(), []
        first = [("p0", o) for o in range(0, 10)]
        second = [("p0", o) for o in range(10, 20)]
        for tp, offset in first + second:
            gate.received(tp, offset)

        async def later() -> None:
            gate.finished(second)
            await gate.wait_earlier(second)
            order.append("second released")

        task = asyncio.create_task(later())
        await asyncio.sleep(0.01)
        assert not task.done()
        order.append("first finished")
        gate.finished(first)
        await asyncio.wait_for(task, 1)
        assert gate.pending() == 0
        return order

    assert asyncio.run(scenario()) == ["first finished", "second released"]


def test_gate_ignores_other_partitions_and_forgets_revoked_ones() -> None:
    async def scenario() -> None:
        gate = OffsetGate()
        gate.received("p0", 0)
        gate.received("p1", 5)
        gate.finished([("p1", 5)])
        await asyncio.wait_for(gate.wait_earlier([("p1", 5)]), 1)  # p0 is not its business
        gate.received("p1", 6)
        gate.finished([("p1", 6)])
        assert gate.blocking([("p0", 3)])
        gate.forget(["p0"])
        await asyncio.wait_for(gate.wait_earlier([("p0", 3)]), 1)

    asyncio.run(scenario())


# -- handle_batch --------------------------------------------------------------------------

CONFIG = ModelConfig(
    name="m",
    max_batch_size=8,
    inputs=[TensorSpec(name="input", datatype="FP32", dims=[1, 2, 2])],
    outputs=[TensorSpec(name="out", dims=[1])],
    preprocessing=PreprocessingSpec(scale=0.5, mean=[1.0], std=[2.0]),
)


class FakeBackend:
    """Validates like the dataplane and answers the sum of each row."""

    def __init__(self) -> None:
        self.seen: list[InferRequest] = []

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        if name != "m":
            raise ModelNotFound(f"model {name!r} not found")
        return CONFIG

    async def infer(self, request: InferRequest) -> InferResponse:
        self.seen.append(request)
        if request.model_name == "boom":
            raise RuntimeError("a bug")
        config = self.model_config(request.model_name)
        validate_request(request, config)
        data = request.inputs[0].data.reshape(request.inputs[0].shape)
        out = data.reshape(data.shape[0], -1).sum(1, keepdims=True).astype(np.float32)
        return InferResponse("m", "1", [InferTensor.from_array("out", out)], request.id,
                             timings=Timings(0.001, 0.002, 3))  # fmt: skip

    async def infer_many(
        self, requests: Sequence[InferRequest]
    ) -> list[InferResponse | BaseException]:
        return await asyncio.gather(*(self.infer(r) for r in requests), return_exceptions=True)


def request_value(request_id: str, data: list[float] | list[int], datatype: str = "FP32",
                  model: str = "m", **extra: object) -> bytes:  # fmt: skip
    tensor = {"name": "input", "datatype": datatype, "shape": [1, 1, 2, 2], "data": data}
    return json.dumps(
        {"request_id": request_id, "model": model, "inputs": [tensor], **extra}
    ).encode()


def record(offset: int, value: bytes | None, key: bytes | None = None) -> SourceRecord:
    return SourceRecord("inference-requests", 0, offset, key, value, [], time.time() - 0.5)


def test_every_record_gets_exactly_one_outcome() -> None:
    backend = FakeBackend()
    records = [
        record(0, request_value("ok", [1.0, 2.0, 3.0, 4.0])),
        record(1, request_value("pixels", [2, 4, 6, 8], "UINT8")),
        record(2, b"nope", key=b"k2"),
        record(3, None, key=b"tomb"),
        record(4, request_value("unknown", [1.0] * 4, model="other")),
        record(5, request_value("late", [1.0] * 4, deadline=time.time() - 1)),
        record(6, request_value("loop", [1.0] * 4, reply_to="inference-requests")),
        record(7, request_value("bug", [1.0] * 4, model="boom")),
        record(8, request_value("elsewhere", [1.0] * 4, reply_to="my-replies")),
    ]
    outcomes = asyncio.run(handle_batch(records, backend))
    assert len(outcomes) == len(records)
    kinds = [(o.kind, o.topic, o.reason) for o in outcomes]
    assert kinds == [
        ("result", "inference-results", None),
        ("result", "inference-results", None),
        ("dlq", "inference-dlq", "not_json"),
        ("dlq", "inference-dlq", "tombstone"),
        ("dlq", "inference-dlq", "model_not_found"),
        ("dlq", "inference-dlq", "deadline_exceeded"),
        ("dlq", "inference-dlq", "invalid_input"),
        ("dlq", "inference-dlq", "internal"),
        ("result", "my-replies", None),
    ]
    assert [o.key for o in outcomes[:4]] == [b"ok", b"pixels", b"k2", b"tomb"]
    result = json.loads(outcomes[0].value)
    assert result["outputs"][0]["data"] == [10.0]
    assert result["timings"]["batch_size"] == 3 and result["timings"]["queue_s"] >= 0.5
    pixels = json.loads(outcomes[1].value)["outputs"][0]["data"][0]
    assert pixels == pytest.approx(sum((p * 0.5 - 1.0) / 2.0 for p in [2, 4, 6, 8]))
    assert backend.seen[1].inputs[0].datatype == "FP32"  # preprocessed before the model
    assert "late" not in [r.id for r in backend.seen]  # never run
    unknown = json.loads(outcomes[4].value)
    assert (unknown["stage"], unknown["source"]["offset"]) == ("validate", 4)


@pytest.mark.parametrize(
    "reply_to",
    [".", "..", "bad topic", "x" * 250, "inference-requests", "inference-dlq", "model-updates",
     "training-jobs", "data-digits", "data-dlq", "__consumer_offsets"],
)  # fmt: skip
def test_a_reply_topic_that_is_invalid_or_not_the_clients_goes_to_the_dlq(reply_to: str) -> None:
    outcomes = asyncio.run(
        handle_batch([record(0, request_value("r", [1.0] * 4, reply_to=reply_to))], FakeBackend())
    )
    [outcome] = outcomes
    assert (outcome.kind, outcome.reason) == ("dlq", "invalid_input")
    assert outcome.topic == "inference-dlq"
    assert f"reply_to {reply_to!r}" in json.loads(outcome.value)["message"]


def test_the_results_topic_and_a_topic_of_ones_own_take_replies() -> None:
    records = [
        record(0, request_value("a", [1.0] * 4, reply_to="inference-results")),
        record(1, request_value("b", [1.0] * 4, reply_to="team.replies_v2")),
    ]
    outcomes = asyncio.run(handle_batch(records, FakeBackend()))
    assert [(o.kind, o.topic) for o in outcomes] == [
        ("result", "inference-results"),
        ("result", "team.replies_v2"),
    ]


class WideBackend(FakeBackend):
    """Answers every row with `width` floats: results as large as the test needs."""

    width = 1

    async def infer(self, request: InferRequest) -> InferResponse:
        out = np.full((1, self.width), 0.123456789, np.float32)
        return InferResponse("m", "1", [InferTensor.from_array("out", out)], request.id)


def test_a_result_too_large_for_a_record_goes_to_the_dlq_and_the_rest_are_answered() -> None:
    backend = WideBackend()
    backend.width = MAX_RESULT_BYTES // 10  # about 11 JSON bytes per float
    records = [record(0, request_value("big", [1.0] * 4)), record(1, b"nope", key=b"k")]
    big, other = asyncio.run(handle_batch(records, backend))
    assert (big.kind, big.reason, big.key) == ("dlq", "result_too_large", b"big")
    dlq = json.loads(big.value)
    assert dlq["stage"] == "produce" and "above the 960000-byte limit" in dlq["message"]
    assert len(big.value) < 64 * 1024 and other.reason == "not_json"
    backend.width = 1000
    [small] = asyncio.run(handle_batch([record(2, request_value("small", [1.0] * 4))], backend))
    assert small.kind == "result"


class ThreeHatingSpec(PreprocessingSpec):
    """Cannot convert a batch that holds a 3 (a conversion that fails for one record)."""

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        if (pixels == 3).any():
            raise ValueError("no threes")
        return super().apply(pixels)


class ThreeHatingBackend(FakeBackend):
    config = CONFIG.model_copy(update={"preprocessing": ThreeHatingSpec(mean=[0.0], std=[1.0])})

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        super().model_config(name, version)
        return self.config


def test_a_record_whose_pixels_cannot_be_converted_goes_to_the_dlq_alone() -> None:
    records = [
        record(0, request_value("a", [1, 2, 4, 5], "UINT8")),
        record(1, request_value("b", [1, 2, 3, 4], "UINT8")),
        record(2, request_value("c", [6, 7, 8, 9], "UINT8")),
    ]
    outcomes = asyncio.run(handle_batch(records, ThreeHatingBackend()))
    assert [(o.kind, o.key, o.reason) for o in outcomes] == [
        ("result", b"a", None),
        ("dlq", b"b", "invalid_input"),
        ("result", b"c", None),
    ]
    dlq = json.loads(outcomes[1].value)
    assert dlq["stage"] == "preprocess" and "could not be preprocessed" in dlq["message"]
    assert json.loads(outcomes[2].value)["timings"]["preprocess_s"] > 0


class FlakyProducer:
    """Refuses some sends outright and fails some deliveries, a given number of times each."""

    def __init__(self, refuse: dict[bytes, int], fail: dict[bytes, int]) -> None:
        self.refuse, self.fail = refuse, fail
        self.delivered: list[bytes] = []

    async def send(self, topic: str, key: bytes, value: bytes, *rest: object) -> asyncio.Future:
        if self.refuse.get(key, 0) > 0:
            self.refuse[key] -= 1
            raise RuntimeError(f"buffer full for {key!r}")
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        if self.fail.get(key, 0) > 0:
            self.fail[key] -= 1
            answer.set_exception(RuntimeError(f"not acknowledged: {key!r}"))
        else:
            self.delivered.append(key)
            answer.set_result(None)
        return answer


def outcomes_for(*keys: bytes) -> list[Outcome]:
    return [Outcome("result", "inference-results", k, b"{}", k.decode()) for k in keys]


def test_produce_retries_refused_and_unacknowledged_outcomes_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "PRODUCE_BACKOFF_S", 0.0)
    producer = FlakyProducer(refuse={b"b": 1}, fail={b"c": 2})
    asyncio.run(delivery.produce_outcomes(producer, outcomes_for(b"a", b"b", b"c")))
    assert producer.delivered == [b"a", b"b", b"c"]  # each delivered once, c on attempt 3


def test_produce_gives_up_after_its_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "PRODUCE_BACKOFF_S", 0.0)
    producer = FlakyProducer(refuse={}, fail={b"b": delivery.PRODUCE_ATTEMPTS})
    with pytest.raises(delivery.ProduceFailed, match="1 outcomes could not be produced"):
        asyncio.run(delivery.produce_outcomes(producer, outcomes_for(b"a", b"b")))
    assert producer.delivered == [b"a"]


def test_a_key_that_is_not_utf8_comes_back_as_it_was_sent() -> None:
    key = b"\xff\xfe-7"
    body = json.loads(request_value("unused", [1.0] * 4))
    del body["request_id"]
    records = [record(0, json.dumps(body).encode(), key=key), record(1, b"nope", key=key)]
    result, dlq = asyncio.run(handle_batch(records, FakeBackend()))
    assert (result.kind, result.key) == ("result", key)
    assert (dlq.kind, dlq.key) == ("dlq", key)
    assert result.request_id == key.decode("utf-8", "replace")
