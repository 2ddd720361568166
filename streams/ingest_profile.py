"""The ingested class balance from the class-counts table's changelog (`data profile --ingested`).

The changelog of the ingestion worker's Faust table holds, per partition of
the data topic, the latest `ClassCounts`; the profile is the latest value per
key, summed over partitions. Records are counted by consuming from the
earliest offset (the embedded broker's end offsets are wrong, DESIGN.md), until
nothing new arrives for `idle_s`, or, with `expect`, until that many records
have been ingested; `timeout_s` bounds either (a read without `expect` that it
cuts short is an error, not a smaller profile).
"""

from __future__ import annotations

import json
import time

from pydantic import BaseModel, Field, ValidationError

from headrace.errors import HeadraceError
from streams.data_messages import ClassCounts
from training.datasets.schema import DatasetSchema

IMBALANCE_WARNING_RATIO = 1.5


class PartitionProgress(BaseModel):
    records: int
    next_offset: int = Field(description="The shards cover the partition up to this offset.")


class IngestedProfile(BaseModel):
    """What `headrace data profile --ingested` reports (and `--json` prints)."""

    dataset: str
    source: str = Field(description="The changelog topic the counts were read from.")
    records: int
    image_shape: list[int]
    class_counts: dict[str, int]
    imbalance_ratio: float = Field(description="Largest class over smallest (inf if one is empty).")
    partitions: dict[int, PartitionProgress]
    warnings: list[str] = Field(default_factory=list)

    @property
    def up_to_offset(self) -> str:
        """The bounds that select exactly these records, as `--up-to-offset` takes them."""
        return ",".join(f"{p}={progress.next_offset}" for p, progress in self.partitions.items())


def read_class_counts(
    bootstrap: str,
    topic: str,
    dataset: str,
    expect: int | None = None,
    idle_s: float = 2.0,
    timeout_s: float = 60.0,
) -> dict[int, ClassCounts]:
    """Partition -> latest counts of `dataset` in the changelog `topic` (module docstring)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        allow_auto_create_topics=False,  # a missing table is reported, not created
        request_timeout_ms=10_000,
    )
    latest: dict[int, ClassCounts] = {}
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise HeadraceError(
                f"no class-counts table {topic!r} on {bootstrap}; start "
                f"`headrace data ingest --dataset {dataset}` (with the same --group) first"
            )
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        done = False
        while not done and time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    counts = _parse(record.value)
                    if counts is not None and counts.dataset == dataset:
                        latest[counts.partition] = counts
            if batches:
                quiet_since = time.monotonic()
            total = sum(c.records for c in latest.values())
            if expect is not None:
                done = total >= expect
            else:
                done = time.monotonic() - quiet_since >= idle_s
    finally:
        consumer.close()
    if not done and expect is None:  # a partial read would pass for the whole table
        raise HeadraceError(
            f"the class-counts table {topic!r} was still being read when the {timeout_s:g} s "
            "timeout ran out; raise --timeout-s"
        )
    return dict(sorted(latest.items()))


def _parse(value: bytes | None) -> ClassCounts | None:
    if value is None:
        return None
    try:
        return ClassCounts.model_validate_json(value)
    except ValidationError:
        return None


def ingested_profile(
    schema: DatasetSchema, counts: dict[int, ClassCounts], source: str, expect: int | None = None
) -> IngestedProfile:
    """Sum the partitions' counts into one profile (warning on imbalance or a short count)."""
    totals = [0] * schema.num_classes
    for partition_counts in counts.values():
        for label, count in enumerate(partition_counts.counts[: schema.num_classes]):
            totals[label] += count
    records = sum(totals)
    smallest, largest = min(totals), max(totals)
    ratio = float("inf") if smallest == 0 else largest / smallest
    warnings = []
    if records and ratio > IMBALANCE_WARNING_RATIO:
        small, large = schema.classes[totals.index(smallest)], schema.classes[totals.index(largest)]
        warnings.append(
            f"class imbalance: {large!r} has {largest} records, {ratio:.2f}x {small!r} "
            f"({smallest}); consider --balance sampler or --balance loss when training"
        )
    if expect is not None and records < expect:
        warnings.append(f"only {records} of the {expect} expected records ingested so far")
    return IngestedProfile(
        dataset=schema.name,
        source=source,
        records=records,
        image_shape=list(schema.shape),
        class_counts=dict(zip(schema.classes, totals, strict=True)),
        imbalance_ratio=ratio,
        partitions={
            p: PartitionProgress(records=c.records, next_offset=c.next_offset)
            for p, c in counts.items()
        },
        warnings=warnings,
    )


def profile_json(profile: IngestedProfile) -> str:
    """The profile as one JSON line (infinite ratios as null)."""
    data = profile.model_dump()
    if data["imbalance_ratio"] == float("inf"):
        data["imbalance_ratio"] = None
    return json.dumps(data)
