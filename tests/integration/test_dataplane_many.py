"""`DataPlane.infer_many` on a real exported LeNet-5: merged submits answer exactly what one
`infer` per request answers, a bad request fails alone, and statistics count every request."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import torch

from headrace.errors import DeadlineExceeded, InvalidInput, ModelNotFound
from serving.classification import top_classes
from serving.dataplane import DataPlane
from serving.model_config import DynamicBatchingConfig, ModelConfig, TensorSpec
from serving.model_manager import ModelManager
from serving.repository import ModelRepository
from serving.types import InferRequest, InferResponse, InferTensor
from streams.codec import encode_result
from streams.messages import InferenceResultMessage, Timings
from streams.results import predicted_class
from training.export import export_onnx
from training.models import build_model

pytestmark = pytest.mark.integration
MAX_BATCH = 8


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    folder = tmp_path_factory.mktemp("many")
    torch.manual_seed(0)
    onnx = export_onnx(build_model("lenet5"), (1, 28, 28), folder / "lenet.onnx")
    repository = ModelRepository(folder / "repo")
    config = ModelConfig(
        name="digits",
        max_batch_size=MAX_BATCH,
        inputs=[TensorSpec(name="input", dims=[1, 28, 28])],
        outputs=[TensorSpec(name="logits", dims=[10])],
        dynamic_batching=DynamicBatchingConfig(max_queue_delay_us=500),
    )
    repository.publish(config, onnx, architecture="lenet5")
    return repository


def request(rows: int, seed: int, model: str = "digits", request_id: str = "") -> InferRequest:
    data = np.random.default_rng(seed).standard_normal((rows, 1, 28, 28), dtype=np.float32)
    return InferRequest(model, [InferTensor.from_array("input", data)], id=request_id)


@contextlib.asynccontextmanager
async def serving(repo: ModelRepository) -> AsyncIterator[DataPlane]:
    """A dataplane over the repository's "digits" model, loaded; closed afterwards."""
    manager = ModelManager(repo)
    await manager.load("digits")
    try:
        yield DataPlane(manager)
    finally:
        await manager.close()


def logits(answer: InferResponse | BaseException) -> np.ndarray:
    assert isinstance(answer, InferResponse), answer
    [tensor] = answer.outputs
    return tensor.data.reshape(tensor.shape)


def test_merged_answers_equal_single_answers_and_bad_requests_fail_alone(
    repo: ModelRepository,
) -> None:
    async def scenario() -> None:
        async with serving(repo) as plane:
            # 13 rows of good requests (more than one max batch), mixed with bad ones
            good = [request(1, s, request_id=f"r{s}") for s in range(9)] + [request(4, 99)]
            wrong_shape = InferRequest(
                "digits", [InferTensor.from_array("input", np.zeros((1, 1, 27, 28), "f4"))]
            )
            unknown = request(1, 5, model="nope")
            expired = request(1, 6)
            expired.deadline = time.monotonic() - 1.0
            batch = [*good[:4], wrong_shape, *good[4:7], unknown, expired, *good[7:]]
            answers = await plane.infer_many(batch)
            singles = [await plane.infer(r) for r in good]
            merged = [a for a in answers if isinstance(a, InferResponse)]
            assert len(answers) == len(batch) and len(merged) == len(good)
            for got, alone, sent in zip(merged, singles, good, strict=True):
                assert got.id == sent.id and got.model_version == "1"
                assert logits(got).shape == (sent.inputs[0].shape[0], 10)
                np.testing.assert_allclose(logits(got), logits(alone), rtol=1e-5, atol=1e-5)
                assert 1 <= got.timings.batch_size <= MAX_BATCH
            assert isinstance(answers[4], InvalidInput) and "input" in answers[4].message
            assert isinstance(answers[8], ModelNotFound)
            assert isinstance(answers[9], DeadlineExceeded)
            stats = plane.statistics("digits")[("digits", "1")]
            assert stats.success_count == 2 * len(good)
            assert stats.inference_count == 2 * sum(r.inputs[0].shape[0] for r in good)
            # wrong shape and expired; the unknown model has no version
            assert stats.fail_count == 2

    asyncio.run(scenario())


def test_empty_batch_and_a_request_bigger_than_a_merge_partner(repo: ModelRepository) -> None:
    async def scenario() -> None:
        async with serving(repo) as plane:
            assert await plane.infer_many([]) == []
            big, small = request(MAX_BATCH, 1), request(1, 2)
            answers = await plane.infer_many([small, big])
            assert [logits(a).shape[0] for a in answers] == [1, MAX_BATCH]
            np.testing.assert_allclose(
                logits(answers[1]), logits(await plane.infer(big)), rtol=1e-5, atol=1e-5
            )

    asyncio.run(scenario())


def test_nan_is_checked_in_every_request_of_a_layout_validated_once(
    repo: ModelRepository,
) -> None:
    async def scenario() -> None:
        async with serving(repo) as plane:
            poisoned = request(1, 7, request_id="nan")
            poisoned.inputs[0].data[0, 0, 3, 4] = np.nan
            batch = [request(1, 1), poisoned, request(1, 2), request(2, 3)]
            answers = await plane.infer_many(batch)
            assert isinstance(answers[1], InvalidInput) and "NaN" in answers[1].message
            assert [logits(answers[i]).shape[0] for i in (0, 2, 3)] == [1, 1, 2]

    asyncio.run(scenario())


def test_classification_and_plain_requests_share_a_batch_and_each_get_their_answer(
    repo: ModelRepository,
) -> None:
    async def scenario() -> None:
        async with serving(repo) as plane:
            plain = [request(2, s) for s in range(3)]
            classed = [request(2, s) for s in range(3)]
            for item in classed:
                item.requested_outputs, item.class_counts = ["logits"], {"logits": 2}
            answers = await plane.infer_many([*plain, *classed])
            for answer, asked in zip(answers[:3], answers[3:], strict=True):
                scores = logits(answer)
                assert isinstance(asked, InferResponse)
                [tensor] = asked.outputs
                assert (tensor.datatype, tensor.shape) == ("BYTES", (2, 2))
                assert tensor.data.tolist() == top_classes(scores, 2, [], batched=True).tolist()
            # on Kafka, the classes travel as strings and `headrace results` reads the best one
            result = InferenceResultMessage.model_validate_json(
                encode_result(answers[3], "r-1", Timings(), None)  # type: ignore[arg-type]
            )
            assert predicted_class(result) == int(np.argmax(logits(answers[0])[0]))
            assert result.outputs[0].data[0].split(":")[1] == str(predicted_class(result))

    asyncio.run(scenario())


def test_sequence_and_priority_parameters_are_ignored_unless_of_a_type_triton_refuses(
    repo: ModelRepository,
) -> None:
    """No model here has sequence batching or priority levels, so Triton's sequence_id,
    sequence_start, sequence_end and priority parameters are ignored, as Triton ignores them;
    a value of a type Triton refuses fails its request alone (INVALID_ARGUMENT, on Kafka the
    DLQ), through infer_many as through infer."""

    def with_parameters(seed: int, **parameters: object) -> InferRequest:
        item = request(1, seed)
        item.parameters = dict(parameters)
        return item

    async def scenario() -> None:
        async with serving(repo) as plane:
            plain = [request(1, 1), request(1, 2)]
            ignored = [
                with_parameters(1, sequence_id=7, sequence_start=True, priority=3),
                with_parameters(2, sequence_id="chat-7", sequence_end=False, priority=0),
            ]
            refused = [
                with_parameters(3, sequence_id=1.5),
                with_parameters(3, sequence_start="true"),
                with_parameters(3, priority=-1),
                with_parameters(3, priority=True),
            ]
            answers = await plane.infer_many([*ignored, *refused])
            expected = await plane.infer_many(plain)
            for answer, same in zip(answers[:2], expected, strict=True):
                np.testing.assert_allclose(logits(answer), logits(same), rtol=1e-5, atol=1e-5)
            names = ["sequence_id", "sequence_start", "priority", "priority"]
            for answer, name in zip(answers[2:], names, strict=True):
                assert isinstance(answer, InvalidInput), answer
                assert f"parameter {name!r} must be" in answer.message
            with pytest.raises(InvalidInput, match="parameter 'priority' must be a whole number"):
                await plane.infer(with_parameters(4, priority=-2))
            # a reserved triton_ key Triton does not define is refused on Kafka too
            [reserved] = await plane.infer_many([with_parameters(5, triton_no_such_option=True)])
            assert isinstance(reserved, InvalidInput), reserved
            assert "parameter 'triton_no_such_option'" in reserved.message

    asyncio.run(scenario())
