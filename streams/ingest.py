"""One taken batch of data records -> DLQ records and shard contents; no Kafka client here.

`plan_batch` validates each record against its dataset's schema: a bad one
becomes a DLQ outcome (`DLQRecord` on `data-dlq`, with the reason and the
original payload or its position), a good one a row of its partition's shard.
Records below a partition's coverage (the offset its shards already reach) were
handled before a restart and are skipped, so a crash between writing a shard
and committing its offsets neither duplicates rows nor double-counts classes.
Offsets of a data topic are contiguous, so a record beyond the next expected
offset means the consumer skipped some (seen once with Faust's fetch during
table recovery): it and the rest of its partition in the batch are held back,
never acked, and the worker reads the partition again from the first missing
offset.

`PartitionState` is what the worker knows of one partition: its coverage and
class counts, read from the shards when the partition is assigned. A skipped
record whose id differs from the one its shard holds at that offset means the
topic was recreated under an old data root (`TopicMismatch`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headrace.errors import DatasetError, HeadraceError
from streams.codec import RecordRejected, dlq_record
from streams.data_messages import ClassCounts, ValidRecord, decode_data_record
from streams.inference import MAX_KEY_BYTES, Outcome, SourceRecord
from streams.messages import MAX_REQUEST_ID_CHARS, RecordRef
from training.datasets.schema import DatasetSchema
from training.datasets.shards import ShardFile, list_shards, read_shard


class TopicMismatch(DatasetError):
    """The shards on disk were written from another incarnation of the topic."""


@dataclass
class PartitionState:
    """Coverage and class counts of one partition's shards."""

    partition: int
    num_classes: int
    next_offset: int = 0
    records: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    known_ids: dict[int, str] = field(default_factory=dict)  # offset -> record id in the shards

    def __post_init__(self) -> None:
        if self.counts.size == 0:
            self.counts = np.zeros(self.num_classes, dtype=np.int64)

    @classmethod
    def from_shards(cls, folder: Path, schema: DatasetSchema, partition: int) -> PartitionState:
        """Read the partition's shards (labels, offsets and ids only), de-duplicated."""
        state = cls(partition, schema.num_classes)
        for shard in list_shards(folder):
            if shard.partition == partition:
                arrays = read_shard(shard, schema)
                state.add(shard, arrays["labels"], arrays["offsets"], arrays["record_ids"])
        return state

    def add(
        self,
        shard: ShardFile,
        labels: np.ndarray,
        offsets: np.ndarray,
        ids: Sequence[str] | np.ndarray,
    ) -> None:
        """Count a shard's rows that no earlier shard held; advance the coverage."""
        for label, offset, record_id in zip(labels, offsets, ids, strict=True):
            if int(offset) not in self.known_ids:
                self.known_ids[int(offset)] = str(record_id)
                self.counts[int(label)] += 1
                self.records += 1
        self.next_offset = max(self.next_offset, shard.last_offset + 1)

    def to_counts(self, dataset: str) -> ClassCounts:
        return ClassCounts(
            dataset=dataset,
            partition=self.partition,
            counts=[int(c) for c in self.counts],
            records=self.records,
            next_offset=self.next_offset,
        )

    def agrees_with(self, counts: ClassCounts) -> bool:
        """Whether a (recovered) table value describes exactly these shards."""
        return (
            counts.next_offset == self.next_offset
            and counts.records == self.records
            and counts.counts == [int(c) for c in self.counts]
        )


@dataclass
class ShardPlan:
    """The rows one partition's shard will hold and the topic range it covers."""

    partition: int
    first_offset: int
    last_offset: int
    records: list[ValidRecord] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def arrays(self, schema: DatasetSchema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images uint8 (N, C, H, W), labels int64, offsets int64)."""
        images = np.zeros((len(self.records), *schema.shape), dtype=np.uint8)
        for row, record in enumerate(self.records):
            images[row] = record.image
        labels = np.asarray([r.label for r in self.records], dtype=np.int64)
        return images, labels, np.asarray(self.offsets, dtype=np.int64)

    @property
    def record_ids(self) -> list[str]:
        return [r.record_id for r in self.records]


@dataclass
class BatchPlan:
    """What to do with one taken batch: DLQ records first, then one shard per partition."""

    dlq: list[Outcome]
    shards: list[ShardPlan]
    skipped: int
    held: set[tuple[int, int]] = field(default_factory=set)
    """(partition, offset) of records after a gap: not handled, never to be acked."""
    rewind: dict[int, int] = field(default_factory=dict)
    """Partition -> the offset to read again from (the first one the gap skipped)."""


def plan_batch(
    records: Sequence[SourceRecord],
    schema: DatasetSchema,
    states: Mapping[int, PartitionState],
    dlq_topic: str,
) -> BatchPlan:
    """Validate every record of the batch; see the module docstring."""
    dlq: list[Outcome] = []
    shards: dict[int, ShardPlan] = {}
    batch = BatchPlan(dlq, [], 0)
    expected = {p: state.next_offset for p, state in states.items()}
    for record in records:
        state = states[record.partition]
        if record.partition in batch.rewind or record.offset > expected[record.partition]:
            # offsets of a data topic are contiguous: a jump means the consumer skipped records
            batch.rewind.setdefault(record.partition, expected[record.partition])
            batch.held.add((record.partition, record.offset))
            continue
        if record.offset < expected[record.partition]:  # handled before (a restart, a re-read)
            if record.offset < state.next_offset:
                _check_same_topic(record, state, schema)
            batch.skipped += 1
            continue
        expected[record.partition] = record.offset + 1
        plan = shards.get(record.partition)
        if plan is None:
            plan = shards[record.partition] = ShardPlan(record.partition, record.offset, 0)
        plan.last_offset = record.offset
        try:
            valid = decode_data_record(record.value, schema)
        except RecordRejected as exc:
            dlq.append(_dlq(record, exc, dlq_topic))
            continue
        plan.records.append(valid)
        plan.offsets.append(record.offset)
    batch.shards = list(shards.values())
    return batch


def _check_same_topic(record: SourceRecord, state: PartitionState, schema: DatasetSchema) -> None:
    expected = state.known_ids.get(record.offset)
    if expected is None:
        return  # a refused record, or one of a shard lost since: nothing to compare
    try:
        record_id = decode_data_record(record.value, schema).record_id
    except RecordRejected:
        record_id = None
    if record_id != expected:
        raise TopicMismatch(
            f"partition {record.partition} offset {record.offset} holds record {record_id!r} but "
            f"the shards hold {expected!r} there: the topic {record.topic} was recreated since "
            "these shards were written (the embedded broker forgets topics when it restarts); "
            "ingest into a new --data-root or move the old shards folder away"
        )


def _key_text(key: bytes | None) -> str | None:
    return key.decode("utf-8", "replace") if key else None


def _dlq(record: SourceRecord, error: HeadraceError, dlq_topic: str) -> Outcome:
    """The record's DLQ outcome, keyed by its key; a key too long to be a record id is left
    out (keyed by megabytes, the outcome could not be produced and the worker would stop on
    it after every restart); its `source` still names the record."""
    record_id = _key_text(record.key)
    if record_id is not None and len(record_id) > MAX_REQUEST_ID_CHARS:
        record_id = None
    stage = error.stage if isinstance(error, RecordRejected) else "validate"
    source = RecordRef(topic=record.topic, partition=record.partition, offset=record.offset)
    value = dlq_record(record_id, error, stage, record.value, source)
    key = record.key if record.key is not None and len(record.key) <= MAX_KEY_BYTES else None
    return Outcome("dlq", dlq_topic, key, value, record_id, reason=error.reason)
