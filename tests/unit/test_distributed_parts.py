"""The distributed engine's parts without Ray or sockets: top-k, payloads, counting, shards."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from pydantic import ValidationError

from headrace.errors import ConfigError
from security.adversarial import AdversarialConfig
from training.config import TrainConfig
from training.distributed.compression import PushEncoder, TopKSparsifier, densify
from training.distributed.config import DistributedConfig, TopKCompression
from training.distributed.counting import ByteCounter, CountingGroup
from training.distributed.fit import check_distributed
from training.distributed.server import ParameterShard, StaleGeneration, partition
from training.distributed.worker import FaultPlan, epoch_shard
from training.job_spec import parse_job_spec
from training.preprocess import BatchPipeline, PreprocessConfig

# -- top-k with error feedback -------------------------------------------------------------------


def test_topk_sends_the_largest_entries_and_remembers_the_rest() -> None:
    sparsifier = TopKSparsifier(ratio=0.25, error_feedback=True)
    grad = torch.tensor([0.1, -4.0, 0.2, 3.0, -0.3, 0.05, 1.0, -0.5])
    values, indices = sparsifier.sparsify(0, grad)
    assert indices.dtype == torch.int32
    assert sorted(indices.tolist()) == [1, 3]
    assert sorted(values.tolist()) == [-4.0, 3.0]
    expected_residual = grad.clone()
    expected_residual[[1, 3]] = 0.0
    assert torch.equal(sparsifier.residuals[0], expected_residual)


def test_error_feedback_loses_nothing_over_steps() -> None:
    """Sent so far + what is still held back == every gradient ever given."""
    generator = torch.Generator().manual_seed(0)
    sparsifier = TopKSparsifier(ratio=0.05, error_feedback=True)
    given = torch.zeros(200)
    sent = torch.zeros(200)
    for _ in range(30):
        grad = torch.randn(200, generator=generator)
        given += grad
        values, indices = sparsifier.sparsify(7, grad)
        assert values.numel() == 10
        sent += densify(values, indices, 200)
    assert torch.allclose(sent + sparsifier.residuals[7], given, atol=1e-4)


def test_held_back_entries_are_sent_once_they_add_up() -> None:
    sparsifier = TopKSparsifier(ratio=0.5, error_feedback=True)
    first = sparsifier.sparsify(0, torch.tensor([1.0, 0.6]))
    assert first[1].tolist() == [0]
    second = sparsifier.sparsify(0, torch.tensor([0.5, 0.6]))  # 0.6 + 0.6 beats 0.5
    assert second[1].tolist() == [1]
    assert second[0].tolist() == pytest.approx([1.2])


def test_without_error_feedback_nothing_is_kept() -> None:
    sparsifier = TopKSparsifier(ratio=0.5, error_feedback=False)
    sparsifier.sparsify(0, torch.tensor([1.0, 0.6]))
    assert sparsifier.residuals == {}
    _, indices = sparsifier.sparsify(0, torch.tensor([1.0, 0.6]))
    assert indices.tolist() == [0]


def test_segments_each_keep_their_own_top_entries() -> None:
    sparsifier = TopKSparsifier(ratio=0.5, error_feedback=False)
    grad = torch.tensor([9.0, 8.0, 7.0, 6.0, 0.1, 0.2])
    _, whole = sparsifier.sparsify(0, grad)
    _, per_segment = sparsifier.sparsify(0, grad, segments=[4, 2])
    assert sorted(whole.tolist()) == [0, 1, 2]
    assert sorted(per_segment.tolist()) == [0, 1, 5]


def test_densify_adds_repeated_indices() -> None:
    dense = densify(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4, 0, 4]), 6)
    assert dense.tolist() == [2.0, 0.0, 0.0, 0.0, 4.0, 0.0]


# -- parameter-server payloads -------------------------------------------------------------------


def test_push_payloads_and_their_sizes() -> None:
    grad = torch.arange(1000, dtype=torch.float32) - 500.0
    plain = PushEncoder(DistributedConfig().compression).encode(0, grad)
    assert plain.nbytes == 4000 and torch.equal(plain.dense(), grad)
    half = PushEncoder(
        DistributedConfig.model_validate({"compression": "fp16"}).compression
    ).encode(0, grad)
    assert half.nbytes == 2000 and torch.equal(half.dense(), grad)  # integers are exact
    sparse = PushEncoder(TopKCompression(ratio=0.01)).encode(0, grad)
    assert sparse.nbytes == 10 * 4 + 10 * 4  # float32 values + int32 indices
    dense = sparse.dense()
    assert torch.count_nonzero(dense) == 10 and dense[0] == -500.0


def test_powersgd_is_not_a_push_encoding() -> None:
    with pytest.raises(ValueError, match="allreduce"):
        PushEncoder(DistributedConfig.model_validate({"compression": "powersgd"}).compression)


# -- counting ------------------------------------------------------------------------------------


class _LocalGroup(dist.ProcessGroup):
    """A one-rank stand-in for gloo: collectives are no-ops, calls are recorded."""

    def __init__(self, rank: int = 0, size: int = 2) -> None:
        super().__init__(rank, size)  # type: ignore[call-arg]
        self.calls: list[str] = []

    def allreduce(self, tensors: Any, opts: Any = None) -> None:  # type: ignore[override]
        self.calls.append("allreduce")

    def allgather(self, outputs: Any, inputs: Any, opts: Any = None) -> None:  # type: ignore[override]
        self.calls.append("allgather")

    def broadcast(self, tensors: Any, opts: Any = None) -> None:  # type: ignore[override]
        self.calls.append("broadcast")


def test_counting_group_counts_what_this_rank_hands_over() -> None:
    counter = ByteCounter()
    inner = _LocalGroup(rank=1)
    group = CountingGroup(inner, counter)
    group.allreduce([torch.zeros(10), torch.zeros(5, dtype=torch.float16)])
    assert counter.total == 40 + 10
    group.allgather([[torch.zeros(3, dtype=torch.int32)] * 2], [torch.zeros(3, dtype=torch.int32)])
    assert counter.total == 50 + 12
    options = dist.BroadcastOptions()
    options.rootRank = 0
    group.broadcast([torch.zeros(100)], options)  # rank 1 receives: nothing sent
    assert counter.total == 62
    options.rootRank = 1
    group.broadcast([torch.zeros(100)], options)
    assert counter.take() == 462 and counter.total == 0
    assert inner.calls == ["allreduce", "allgather", "broadcast", "broadcast"]
    assert group.size() == 2 and group.rank() == 1


# -- parameter-server shards ---------------------------------------------------------------------


def test_partition_balances_by_size_and_keeps_model_order() -> None:
    sizes = [("a", 10), ("b", 1000), ("c", 300), ("d", 600), ("e", 50)]
    shards = partition(sizes, 2)
    assert shards == [["b"], ["a", "c", "d", "e"]]
    assert partition(sizes, 1) == [["a", "b", "c", "d", "e"]]


def _shard(workers: int = 2) -> ParameterShard:
    config = TrainConfig(optimizer="sgd", momentum=0.0, learning_rate=0.5, lr_schedule="none")
    shard = ParameterShard(config.model_dump_json(), ["w", "b"], [[2, 2], [2]], workers)
    shard.load(3, {"params": {"w": torch.ones(2, 2), "b": torch.zeros(2)}})
    return shard


def test_shard_steps_once_all_workers_pushed_and_answers_both() -> None:
    shard = _shard()
    encoder = PushEncoder(DistributedConfig().compression)

    async def both() -> list[np.ndarray]:
        first = encoder.encode(0, torch.full((6,), 2.0))
        second = encoder.encode(0, torch.full((6,), 4.0))
        return list(await asyncio.gather(shard.push_pull(3, first), shard.push_pull(3, second)))

    answers = asyncio.run(both())
    expected = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0]) - 0.5 * 3.0  # mean gradient 3
    for answer in answers:
        np.testing.assert_allclose(answer, expected)
    state = shard.state()
    assert torch.allclose(state["params"]["w"], torch.full((2, 2), -0.5))


def test_shard_refuses_pushes_of_an_earlier_attempt() -> None:
    shard = _shard()
    push = PushEncoder(DistributedConfig().compression).encode(0, torch.zeros(6))
    with pytest.raises(StaleGeneration):
        asyncio.run(shard.push_pull(2, push))


# -- configuration and data sharding -------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "parameter_server", "compression": "powersgd"}, "powersgd"),
        ({"strategy": "hybrid", "sync_every": 4}, "local SGD"),
        ({"sync_every": 4, "compression": "topk"}, "uncompressed"),
        ({"server_shards": 2}, "server_shards"),
    ],
)
def test_unsupported_combinations_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DistributedConfig(**settings)


def test_defaults_allow_two_retries() -> None:
    config = DistributedConfig.model_validate(
        {"workers": 2, "compression": {"kind": "topk", "ratio": 0.05}}
    )
    assert config.max_retries == 2
    assert json.loads(config.model_dump_json())["compression"]["ratio"] == 0.05


def test_fault_plan_parses_and_explains_mistakes() -> None:
    assert FaultPlan.parse("rank=1,epoch=2") == FaultPlan(rank=1, epoch=2, step=2)
    assert FaultPlan.parse("rank=0, epoch=3, step=5").step == 5
    with pytest.raises(ConfigError, match="rank=1,epoch=2"):
        FaultPlan.parse("rank=one")


def test_distributed_runs_refuse_training_hooks(tmp_path: Path) -> None:
    key = tmp_path / "watermark.key"
    key.write_text("{}")
    # refused when the spec is checked (`train submit`, the agent's `rejected`), not after
    # the job had been accepted and started
    sections: list[dict[str, Any]] = [
        {"adversarial": {"method": "fgsm", "epsilon": 0.1}},
        {"watermark": {"key_file": str(key)}},
    ]
    for section in sections:
        document = {"model": "lenet5", "distributed": {"workers": 2}, **section}
        with pytest.raises(ConfigError, match="distributed runs do not support"):
            parse_job_spec(document, available_cpus=2)
        single = {**document, "distributed": {"workers": 1}}
        assert parse_job_spec(single, available_cpus=2).train.distributed is not None
    # and still by the driver, for a config that skipped validation
    config = TrainConfig.model_validate({"distributed": {"workers": 2}}).model_copy(
        update={"adversarial": AdversarialConfig(method="fgsm", epsilon=0.1)}
    )
    with pytest.raises(ConfigError, match="do not support training hooks"):
        check_distributed(config)


@pytest.mark.parametrize(("strategy", "served"), [("parameter_server", 10), ("hybrid", 6)])
def test_more_server_shards_than_parameters_are_refused_with_the_spec(
    strategy: str, served: int
) -> None:
    # the driver refused them, after the job had been accepted and started
    def spec(shards: int) -> dict[str, Any]:
        section = {"workers": 2, "strategy": strategy, "server_shards": shards}
        return {"model": "lenet5", "distributed": section}

    with pytest.raises(ConfigError, match=f"lenet5 has {served} to serve"):
        parse_job_spec(spec(served + 1), available_cpus=2)
    assert parse_job_spec(spec(served), available_cpus=2).train.distributed is not None


def test_a_global_batch_smaller_than_the_workers_is_refused() -> None:
    # each of 3 workers stepped on max(1, 2 // 3) = 1 image: a global batch of 3, not 2
    with pytest.raises(ConfigError, match="batch_size 2 is the global batch, split over 3"):
        parse_job_spec({"batch_size": 2, "distributed": {"workers": 3}}, available_cpus=3)
    assert parse_job_spec({"batch_size": 3, "distributed": {"workers": 3}}, available_cpus=3)


def test_epoch_shards_are_disjoint_equal_and_seeded() -> None:
    labels = np.arange(101) % 10
    images = np.zeros((101, 1, 4, 4), dtype=np.uint8)
    pipeline = BatchPipeline(PreprocessConfig(), "digits", images, labels, 10, seed=0)
    shards = [epoch_shard(pipeline, seed=0, epoch=3, rank=r, world=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0]) & set(shards[1])
    assert np.array_equal(shards[0], epoch_shard(pipeline, seed=0, epoch=3, rank=0, world=2))
    assert not np.array_equal(shards[0], epoch_shard(pipeline, seed=0, epoch=4, rank=0, world=2))
