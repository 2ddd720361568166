"""Data ingestion without a broker: record validation, the DLQ records, batch planning, bad-record
generation and the ingested profile."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace.errors import ConfigError
from streams.codec import RecordRejected
from streams.data_messages import (
    ClassCounts,
    DataRecordMessage,
    decode_data_record,
    encode_data_record,
)
from streams.data_producer import BAD_KINDS, bad_value, plan_records
from streams.inference import SourceRecord
from streams.ingest import PartitionState, TopicMismatch, plan_batch
from streams.ingest_profile import ingested_profile
from streams.messages import DLQRecord
from training.datasets.schema import SCHEMAS, DatasetSchema, dataset_schema
from training.datasets.shards import shards_dir, write_shard

DIGITS = SCHEMAS["digits"]
CIFAR = SCHEMAS["cifar10"]
TOPIC = "data-digits"


def image(schema: DatasetSchema = DIGITS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, schema.shape, dtype=np.uint8)


def record(partition: int, offset: int, value: bytes | None, key: str = "k") -> SourceRecord:
    return SourceRecord(TOPIC, partition, offset, key.encode(), value, [])


# -- schemas -------------------------------------------------------------------------------


def test_the_embedded_dataset_fits_its_schema() -> None:
    from training.datasets import load_raw

    raw = load_raw("digits")
    assert raw.data.images.shape[1:] == DIGITS.shape
    assert raw.classes == DIGITS.classes
    assert CIFAR.shape == (3, 32, 32) and CIFAR.num_classes == 10


def test_unknown_dataset_schema_lists_the_known_ones() -> None:
    with pytest.raises(Exception, match="cifar10, digits, mnist"):
        dataset_schema("imagenet")


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("compact", [False, True])
def test_a_good_record_round_trips_in_both_pixel_forms(compact: bool) -> None:
    pixels = image(CIFAR, seed=3)
    value = encode_data_record("r-1", 7, pixels, source="cam", compact=compact)
    body = json.loads(value)
    assert ("b64" in body["image"]) == compact and ("data" in body["image"]) != compact
    valid = decode_data_record(value, CIFAR)
    assert valid.record_id == "r-1" and valid.label == 7
    assert valid.image.dtype == np.uint8 and np.array_equal(valid.image, pixels)


def test_the_compact_form_is_smaller() -> None:
    pixels = image(seed=1)
    assert len(encode_data_record("r", 1, pixels, compact=True)) < 0.5 * len(
        encode_data_record("r", 1, pixels)
    )


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_bad_kind_is_refused_with_its_reason(kind: str) -> None:
    value = bad_value(kind, "bad-1", image(), DIGITS)
    with pytest.raises(RecordRejected) as caught:
        decode_data_record(value, DIGITS)
    assert caught.value.reason == kind
    assert caught.value.stage == ("validate" if kind in {
        "wrong_shape", "pixel_out_of_range", "label_out_of_range"} else "decode")  # fmt: skip
    assert caught.value.message  # says what is wrong


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        (lambda b: b.update(label=True), "invalid_schema", "label"),
        (lambda b: b.update(label="3"), "invalid_schema", "label"),
        (lambda b: b.update(extra=1), "invalid_schema", "extra"),
        (lambda b: b.update(schema_version=2), "invalid_schema", "schema_version"),
        (lambda b: b["image"].update(datatype="FP32"), "invalid_schema", "datatype"),
        (lambda b: b["image"].update(data=[0] * 10), "wrong_shape", "784"),
        (lambda b: b["image"].update(b64="abc", data=None), "invalid_schema", "base64"),
        (lambda b: b["image"].update(b64="AAAA"), "invalid_schema", "exactly one"),
        (lambda b: b["image"].update(shape=[3, 28, 28]), "wrong_shape", "[1, 28, 28]"),
        (lambda b: b.update(label=-1), "label_out_of_range", "0..9"),
    ],
)
def test_schema_problems_name_what_is_wrong(
    change: Callable[[dict[str, Any]], object], reason: str, words: str
) -> None:
    body = json.loads(encode_data_record("r", 1, image()))
    change(body)
    body = {k: v for k, v in body.items() if v is not None}
    body["image"] = {k: v for k, v in body["image"].items() if v is not None}
    with pytest.raises(RecordRejected) as caught:
        decode_data_record(json.dumps(body).encode(), DIGITS)
    assert caught.value.reason == reason
    assert words in caught.value.message


def test_an_oversized_record_is_refused_before_parsing() -> None:
    with pytest.raises(RecordRejected) as caught:
        decode_data_record(b"x" * (4 * 1024 * 1024 + 1), DIGITS)
    assert caught.value.reason == "payload_too_large"


def test_the_message_schema_is_versioned() -> None:
    message = DataRecordMessage.model_validate_json(encode_data_record("r", 2, image()))
    assert message.schema_version == 1 and message.image.datatype == "UINT8"


# -- bad-record generation -------------------------------------------------------------------


def test_planned_records_spread_every_bad_kind_among_the_good_ones() -> None:
    images = np.stack([image(seed=s) for s in range(5)])
    labels = np.arange(5)
    planned = plan_records(DIGITS, images, labels, n=30, bad=6, prefix="t")
    assert len(planned) == 36
    assert [r.bad for r in planned if r.bad] == list(BAD_KINDS)
    good = [r for r in planned if r.bad is None]
    assert [r.record_id for r in good] == [f"t-{i:06d}" for i in range(30)]
    assert [r.label for r in good] == [i % 5 for i in range(30)]
    assert planned[0].bad is None and planned[-1].bad is None  # bad ones sit between good ones
    again = plan_records(DIGITS, images, labels, n=30, bad=6, prefix="t")  # same ids, same order
    assert [(r.record_id, r.bad) for r in again] == [(r.record_id, r.bad) for r in planned]


def test_an_id_prefix_too_long_for_the_record_id_is_refused_before_planning() -> None:
    # `headrace data publish --id-prefix <250 characters>` printed a pydantic traceback.
    images, labels = np.stack([image()]), np.zeros(1, dtype=np.int64)
    longest_good = "p" * (256 - len("-000000"))
    assert len(plan_records(DIGITS, images, labels, n=3, prefix=longest_good)[-1].record_id) == 256
    with pytest.raises(ConfigError, match="prefix of at most 249"):
        plan_records(DIGITS, images, labels, n=3, prefix=longest_good + "p")
    with pytest.raises(ConfigError, match="prefix of at most 247"):  # the bad ones' -bad-0000
        plan_records(DIGITS, images, labels, n=3, bad=1, prefix=longest_good)


# -- one batch -----------------------------------------------------------------------------


def test_a_batch_becomes_dlq_records_and_one_shard_range_per_partition() -> None:
    good = [encode_data_record(f"g{i}", i % 10, image(seed=i)) for i in range(4)]
    tombstone = bad_value("tombstone", "b0", image(), DIGITS)
    not_json = bad_value("not_json", "b1", image(), DIGITS)
    batch = [
        record(0, 10, good[0], "g0"),
        record(0, 11, not_json, "b1"),
        record(0, 12, good[1], "g1"),
        record(1, 5, tombstone, "b0"),  # partition 1 has only a bad record
        record(2, 0, good[2], "g2"),
    ]
    states = {p: PartitionState(p, 10, next_offset=start) for p, start in ((0, 10), (1, 5), (2, 0))}
    plan = plan_batch(batch, DIGITS, states, "data-dlq")
    assert plan.skipped == 0 and not plan.held and not plan.rewind
    assert [(s.partition, s.first_offset, s.last_offset) for s in plan.shards] == [
        (0, 10, 12),
        (1, 5, 5),
        (2, 0, 0),
    ]
    assert [s.record_ids for s in plan.shards] == [["g0", "g1"], [], ["g2"]]
    assert [s.offsets for s in plan.shards] == [[10, 12], [], [0]]
    assert [o.topic for o in plan.dlq] == ["data-dlq", "data-dlq"]
    refused = [DLQRecord.model_validate_json(o.value) for o in plan.dlq]
    assert [(r.request_id, r.error_code, r.stage) for r in refused] == [
        ("b1", "not_json", "decode"),
        ("b0", "tombstone", "decode"),
    ]
    assert refused[0].payload == not_json.decode() and refused[1].payload is None  # type: ignore[union-attr]
    assert refused[0].source is not None and refused[0].source.offset == 11
    assert refused[1].source is not None and refused[1].source.partition == 1
    images, labels, offsets = plan.shards[0].arrays(DIGITS)
    assert images.shape == (2, 1, 28, 28) and np.array_equal(images[1], image(seed=1))
    assert labels.tolist() == [0, 1] and offsets.tolist() == [10, 12]


def test_records_below_the_coverage_are_skipped_and_checked(tmp_path: Path) -> None:
    folder = shards_dir(tmp_path, "digits")
    first = encode_data_record("a", 3, image())
    shard = write_shard(folder, 0, 0, 1, image()[np.newaxis], np.array([3]), np.array([0]), ["a"])
    state = PartitionState.from_shards(folder, DIGITS, 0)
    assert (state.next_offset, state.records, state.counts[3]) == (2, 1, 1)
    assert shard.path.is_file()
    plan = plan_batch(
        [record(0, 0, first), record(0, 1, b"junk"), record(0, 2, first)], DIGITS, {0: state}, "d"
    )
    assert plan.skipped == 2 and not plan.dlq  # the bad one at offset 1 was refused before
    assert [(s.first_offset, s.last_offset, s.offsets) for s in plan.shards] == [(2, 2, [2])]
    other = encode_data_record("someone-else", 3, image())
    with pytest.raises(TopicMismatch, match="recreated"):
        plan_batch([record(0, 0, other)], DIGITS, {0: state}, "d")


def test_records_after_a_gap_are_held_and_the_partition_read_again() -> None:
    value = encode_data_record("g", 1, image())
    batch = [record(0, o, value) for o in (4, 5, 6, 9, 10)] + [record(1, 3, value)]
    batch.append(record(0, 7, value))  # a late arrival does not resume the partition mid-batch
    states = {0: PartitionState(0, 10, next_offset=5), 1: PartitionState(1, 10, next_offset=3)}
    plan = plan_batch(batch, DIGITS, states, "d")
    assert plan.skipped == 1  # offset 4: below the coverage
    assert [(s.partition, s.offsets) for s in plan.shards] == [(0, [5, 6]), (1, [3])]
    assert plan.rewind == {0: 7} and plan.held == {(0, 9), (0, 10), (0, 7)}


def test_partition_state_counts_each_offset_once(tmp_path: Path) -> None:
    folder = shards_dir(tmp_path, "digits")
    pixels = np.stack([image(seed=s) for s in range(3)])
    write_shard(folder, 0, 0, 2, pixels, np.array([1, 2, 2]), np.array([0, 1, 2]), "abc")
    write_shard(folder, 0, 2, 4, pixels[:2], np.array([2, 5]), np.array([2, 4]), ["c", "e"])
    write_shard(folder, 1, 0, 0, pixels[:1], np.array([9]), np.array([0]), ["z"])
    state = PartitionState.from_shards(folder, DIGITS, 0)
    assert state.records == 4 and state.next_offset == 5
    assert state.counts.tolist() == [0, 1, 2, 0, 0, 1, 0, 0, 0, 0]
    counts = state.to_counts("digits")
    assert state.agrees_with(counts)
    assert not state.agrees_with(counts.model_copy(update={"next_offset": 4}))


# -- the ingested profile ------------------------------------------------------------------


def test_the_ingested_profile_sums_the_partitions() -> None:
    counts = {
        0: ClassCounts(dataset="digits", partition=0, counts=[2] * 10, records=20, next_offset=21),
        1: ClassCounts(
            dataset="digits", partition=1, counts=[1] * 9 + [5], records=14, next_offset=30
        ),
    }
    profile = ingested_profile(DIGITS, counts, "topic", expect=40)
    assert (
        profile.records == 34 and profile.class_counts["9"] == 7 and profile.class_counts["0"] == 3
    )
    assert profile.imbalance_ratio == pytest.approx(7 / 3)
    assert profile.up_to_offset == "0=21,1=30"
    assert any("imbalance" in w for w in profile.warnings)
    assert any("only 34 of the 40" in w for w in profile.warnings)


def test_base64_pixels_are_the_raw_bytes() -> None:
    pixels = image(seed=9)
    body = json.loads(encode_data_record("r", 0, pixels, compact=True))
    assert base64.b64decode(body["image"]["b64"]) == pixels.tobytes()
