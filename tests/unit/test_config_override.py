"""Triton's load-time config override (`load_model(name, config=JSON)`): what it may change,
what it refuses naming the field, and how long it lasts, on a real model manager."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from unsafe_files import identity_model

from headrace.errors import InvalidInput
from serving.config_override import apply_override
from serving.dataplane import DataPlane
from serving.grpc_convert import model_config_to_proto
from serving.model_config import (
    AutoscalingConfig,
    DynamicBatchingConfig,
    ModelConfig,
    PreprocessingSpec,
    TensorSpec,
)
from serving.model_manager import ModelManager
from serving.repository import ModelRepository
from serving.version_policy import VersionPolicy

BASE = ModelConfig(
    name="m",
    max_batch_size=8,
    inputs=[TensorSpec(name="input", dims=[4])],
    outputs=[TensorSpec(name="out", dims=[4])],
    dynamic_batching=DynamicBatchingConfig(max_queue_delay_us=1000, max_queue_size=16),
    labels=["a", "b", "c", "d"],
)
POLICY = VersionPolicy()


def answered() -> dict[str, object]:
    """The model's config as tritonclient's get_model_config(as_json=True) gives it."""
    proto = model_config_to_proto(BASE, POLICY, {"version": "1"})
    document: dict[str, object] = json_format.MessageToDict(proto, preserving_proto_field_name=True)
    return document


def test_the_config_a_server_answers_goes_back_unchanged() -> None:
    assert apply_override(json.dumps(answered()), BASE, POLICY) == BASE
    assert apply_override("{}", BASE, POLICY) == BASE


def test_an_override_sets_batching_and_instances_and_keeps_what_it_does_not_state() -> None:
    edited = answered() | {
        "max_batch_size": 4,
        "instance_group": [{"kind": "KIND_CPU", "count": 2}, {"count": 1}],
        "dynamic_batching": {"max_queue_delay_microseconds": "250"},
    }
    got = apply_override(json.dumps(edited), BASE, POLICY)
    assert (got.max_batch_size, got.instance_count) == (4, 3)
    assert got.dynamic_batching == DynamicBatchingConfig(max_queue_delay_us=250, max_queue_size=16)
    camel = {"maxBatchSize": 2, "dynamicBatching": {"preferredBatchSize": [2]}}
    got = apply_override(json.dumps(camel), BASE, POLICY)
    assert (got.max_batch_size, got.dynamic_batching.preferred_batch_sizes) == (2, [2])
    assert got.labels == BASE.labels and got.dynamic_batching.max_queue_delay_us == 1000


def test_json_parameters_restated_with_other_spacing_order_or_spelling_are_the_same() -> None:
    """Before: labels and preprocessing were compared as strings, so a restatement typed by
    hand (`["a","b","c","d"]`, keys in another order, 0.10 for 0.1) was refused as a change."""
    spec = PreprocessingSpec(mean=[0.1], std=[0.3])
    base = BASE.model_copy(update={"preprocessing": spec})
    retyped = {
        "labels": {"string_value": '["a","b","c","d"]'},
        "preprocessing": {"string_value": json.dumps({"std": [0.30], "mean": [0.10]})},
    }
    assert apply_override(json.dumps({"parameters": retyped}), base, POLICY) == base
    changed = {"labels": {"string_value": '["a","b","c","e"]'}}
    with pytest.raises(InvalidInput, match=r"parameters\['labels'\] differs"):
        apply_override(json.dumps({"parameters": changed}), base, POLICY)


@pytest.mark.parametrize(
    "override",
    [
        '{"max_batch_size": null}',
        '{"instance_group": null}',
        '{"dynamic_batching": null}',
        '{"dynamic_batching": {"max_queue_delay_microseconds": null}}',
        '{"dynamic_batching": {"preferred_batch_size": null}}',
        '{"dynamic_batching": {"default_queue_policy": null}}',
        '{"input": null, "parameters": null, "version_policy": null}',
    ],
)
def test_a_field_given_as_null_is_left_out(override: str) -> None:
    """JSON null is no value: the field keeps config.json's, as a field left out does
    (it was read as protobuf's zero: a queue delay of 0, no preferred sizes, a refusal)."""
    base = BASE.model_copy(
        update={
            "instance_count": 3,
            "dynamic_batching": DynamicBatchingConfig(
                max_queue_delay_us=1000, preferred_batch_sizes=[4], max_queue_size=16
            ),
        }
    )
    assert apply_override(override, base, POLICY) == base


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("{max", "not JSON"),
        ("[1]", "a JSON object"),
        ("[" * 100_000, "nested too deeply"),
        ('{"sequence_batching": {}}', "sequence_batching cannot be set on this server; an"),
        ('{"max_batch_sise": 4}', "max_batch_sise cannot be set on this server; an override"),
        (
            '{"instance_group": [{"count": 1}, {"rate_limiter": {}}]}',
            "instance_group[1].rate_limiter cannot be set on this server",
        ),
        (
            '{"dynamic_batching": {"default_queue_policy": {"timeout_s": 1}}}',
            "dynamic_batching.default_queue_policy.timeout_s cannot be set on this server",
        ),
        ('{"model_transaction_policy": {"decoupled": true}}', "model_transaction_policy cannot"),
        ('{"response_cache": {"enable": true}}', "response_cache cannot be set"),
        ('{"name": "other"}', "name 'other' is not the model's ('m')"),
        ('{"backend": "python"}', "runs onnxruntime_onnx models only"),
        ('{"max_batch_size": 0}', "max_batch_size 0 would add or remove the batch axis"),
        ('{"max_batch_size": 100000}', "max_batch_size: Input should be less than or equal"),
        (
            '{"dynamic_batching": {"max_queue_delay_microseconds": 3600000001}}',
            "max_queue_delay_us: Input should be less than or equal to 3600000000",
        ),
        ('{"instance_group": [{"kind": "KIND_GPU"}]}', "KIND_GPU: this server runs models on CPU"),
        ('{"instance_group": [{"count": 2, "gpus": [0]}]}', "instance_group: gpus cannot be set"),
        ('{"instance_group": [{"count": 300}]}', "add up to 300 instances, more than 256"),
        ('{"instance_group": [{"count": -1}]}', "instance_group count -1 is negative"),
        ('{"instance_group": []}', "instance_group is empty: give at least one group"),
        ('{"dynamic_batching": {"priority_levels": 2}}', "dynamic_batching: priority_levels"),
        ('{"dynamic_batching": {"default_queue_policy": {}}}', "max_queue_size 0 (no bound)"),
        ('{"dynamic_batching": {"preferred_batch_size": [64]}}', "must lie in 1..max_batch_size"),
        ('{"version_policy": {"all": {}}}', "version_policy is the server's"),
        ('{"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]}', "input differs"),
        ('{"parameters": {"labels": {"string_value": "[]"}}}', "parameters['labels'] differs"),
        ('{"parameters": {"extra": {"string_value": "1"}}}', "parameters['extra'] is not a"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_it(override: str, message: str) -> None:
    with pytest.raises(InvalidInput, match="config override: ") as caught:
        apply_override(override, BASE, POLICY)
    assert message in caught.value.message


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_an_override_lasts_until_a_load_without_one_and_covers_new_versions(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    repository = ModelRepository(tmp_path / "repo")
    model_file = identity_model(tmp_path / "identity.onnx")
    repository.publish(BASE, model_file, architecture="test")
    manager = ModelManager(repository, batching=False)
    dataplane = DataPlane(manager)

    def served() -> dict[int, tuple[int, int]]:
        return {
            v: (
                manager.get("m", str(v)).config.max_batch_size,
                manager.get("m", str(v)).model.instances,
            )
            for v in manager.loaded()["m"]
        }

    async def scenario() -> list[dict[int, tuple[int, int]]]:
        await manager.load_all()
        seen = [served()]
        override = {"max_batch_size": 2, "instance_group": [{"count": 2}]}
        await dataplane.load("m", {"config": json.dumps(override)})
        seen.append(served())
        repository.publish(BASE, model_file, architecture="test")  # version 2, config.json's
        await manager.poll_once()
        seen.append(served())
        with pytest.raises(InvalidInput, match="model files in the request"):
            await dataplane.load("m", {"config": "{}", "file:1/model.onnx": b"x"})
        with pytest.raises(InvalidInput, match="must be a string holding a JSON model config"):
            await dataplane.load("m", {"config": b"{}"})
        seen.append(served())  # refused loads change nothing
        await dataplane.load("m")
        seen.append(served())
        await manager.close()
        return seen

    assert loop.run_until_complete(scenario()) == [
        {1: (8, 1)},
        {1: (2, 2)},
        {2: (2, 2)},  # published during the override: loaded with it
        {2: (2, 2)},
        {2: (8, 1)},  # a load without an override: config.json's again
    ]


def test_an_older_versions_config_goes_back_with_its_own_preprocessing(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """Each version is served with the preprocessing it was trained with, so the config
    get_model_config answers for an older version differs from config.json (which follows
    the latest publish) in `preprocessing`: sent back, it is a restatement, not a change."""
    repository = ModelRepository(tmp_path / "repo")
    model_file = identity_model(tmp_path / "identity.onnx")
    for mean in (0.1, 0.2):  # version 1, then version 2 trained on other data
        pixels = PreprocessingSpec(mean=[mean], std=[1.0])
        repository.publish(
            BASE.model_copy(update={"preprocessing": pixels}), model_file, architecture="test"
        )
    manager = ModelManager(repository, policy=VersionPolicy(kind="all"), batching=False)
    dataplane = DataPlane(manager)

    async def scenario() -> dict[int, tuple[int, list[float]]]:
        await manager.load_all()
        answer = model_config_to_proto(
            dataplane.model_config("m", "1"), manager.policy, dataplane.version_parameters("m", "1")
        )
        edited = json_format.MessageToDict(answer, preserving_proto_field_name=True)
        await dataplane.load("m", {"config": json.dumps(edited | {"max_batch_size": 4})})
        with pytest.raises(InvalidInput, match=r"parameters\['preprocessing'\] differs"):
            other = PreprocessingSpec(mean=[0.3], std=[1.0]).model_dump_json()
            edited["parameters"]["preprocessing"] = {"string_value": other}
            await dataplane.load("m", {"config": json.dumps(edited)})
        served = {}
        for version in manager.loaded()["m"]:
            config = manager.get("m", version).config
            assert config.preprocessing is not None
            served[version] = (config.max_batch_size, config.preprocessing.mean)
        await manager.close()
        return served

    assert loop.run_until_complete(scenario()) == {1: (4, [0.1]), 2: (4, [0.2])}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            '{"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [2, 6]}}',
            "config override: dynamic_batching.preferred_batch_size [2, 6] must lie in "
            "1..max_batch_size (4)",
        ),
        (
            '{"max_batch_size": 4}',
            "config override: dynamic_batching.preferred_batch_size [8] (config.json's: state "
            "preferred_batch_size too) must lie in 1..max_batch_size (4)",
        ),
    ],
)
def test_preferred_sizes_that_do_not_fit_are_named_as_triton_names_them(
    override: str, message: str
) -> None:
    """Triton's field is `preferred_batch_size`; the message was pydantic's, naming
    config.json's field: "config: Value error, dynamic_batching.preferred_batch_sizes ..."."""
    batching = DynamicBatchingConfig(preferred_batch_sizes=[8])
    with pytest.raises(InvalidInput) as caught:
        apply_override(override, BASE.model_copy(update={"dynamic_batching": batching}), POLICY)
    assert caught.value.message == message


def test_a_preferred_size_given_many_times_counts_once() -> None:
    """100,000 copies of 1 in preferred_batch_size (an override or config.json) were kept and
    echoed back by get_model_config, and a size that did not fit was named 100,000 times.
    Triton's scheduler keeps the sizes in a set: a repeat is dropped, the order kept."""
    override = {"dynamic_batching": {"preferred_batch_size": [4] + [1] * 100_000 + [4, 2]}}
    got = apply_override(json.dumps(override), BASE, POLICY)
    assert got.dynamic_batching.preferred_batch_sizes == [4, 1, 2]
    answer = model_config_to_proto(got, POLICY, {"version": "1"})
    assert list(answer.dynamic_batching.preferred_batch_size) == [4, 1, 2]
    config_json = {**BASE.model_dump(), "dynamic_batching": {"preferred_batch_sizes": [2, 2, 1]}}
    assert ModelConfig.model_validate(config_json).dynamic_batching.preferred_batch_sizes == [2, 1]
    too_big = {"dynamic_batching": {"preferred_batch_size": [9] * 1000}}
    with pytest.raises(InvalidInput) as caught:
        apply_override(json.dumps(too_big), BASE, POLICY)
    assert caught.value.message == (
        "config override: dynamic_batching.preferred_batch_size [9] must lie in "
        "1..max_batch_size (8)"
    )


def test_get_model_configs_whole_answer_is_refused_with_the_member_to_send() -> None:
    """tritonclient's get_model_config(as_json=True) wraps the config in {"config": ...};
    sent as it is, the refusal said only that ModelConfig has no field named "config"."""
    with pytest.raises(InvalidInput) as caught:
        apply_override(json.dumps({"config": answered()}), BASE, POLICY)
    assert caught.value.message == (
        "config override: this is get_model_config's whole answer; send its 'config' member "
        "(json.dumps(answer['config']))"
    )


def test_instances_outside_the_models_autoscaling_range_are_refused() -> None:
    """An autoscaled model runs between min_instances and max_instances whatever the
    override says: count 10 on a model scaled within 3..4 loaded 4 sessions while
    get_model_config answered count 10. A count in the range is where it starts; config.json's
    own count (3 here, what get_model_config answers; ModelConfig keeps it in the range) may
    be restated."""
    scaled = BASE.model_copy(
        update={
            "autoscaling": AutoscalingConfig(min_instances=3, max_instances=4),
            "instance_count": 3,
        }
    )
    for count in (2, 10):
        with pytest.raises(InvalidInput) as caught:
            apply_override(json.dumps({"instance_group": [{"count": count}]}), scaled, POLICY)
        assert caught.value.message == (
            f"config override: instance_group counts add up to {count} instances, outside "
            "the model's autoscaling range 3..4 (config.json's autoscaling section moves its "
            "instances within it); give a count in that range, or leave instance_group out"
        )
    started = apply_override('{"instance_group": [{"count": 4}]}', scaled, POLICY)
    assert started.instance_count == 4
    restated = apply_override('{"instance_group": [{"count": 3}]}', scaled, POLICY)
    assert restated == scaled
