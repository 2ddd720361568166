"""Produce training-data records from a dataset's real samples (what `headrace data publish` does).

Good records carry real images and labels as `DataRecordMessage` JSON, keyed
by `record_id` (`<prefix>-<index>`, so the same call always spreads records
over partitions the same way). Bad records, for demos and tests of the DLQ,
cycle through `BAD_KINDS` -- each named after the DLQ reason it must get -- and
are spread evenly between the good ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from headrace.errors import ConfigError
from streams.data_messages import (
    INVALID_SCHEMA,
    LABEL_RANGE,
    MAX_RECORD_ID_CHARS,
    NOT_JSON,
    PIXEL_RANGE,
    TOMBSTONE,
    WRONG_SHAPE,
    encode_data_record,
)
from training.datasets.schema import DatasetSchema

BAD_KINDS = (NOT_JSON, INVALID_SCHEMA, WRONG_SHAPE, PIXEL_RANGE, LABEL_RANGE, TOMBSTONE)
SOURCE = "headrace data publish"


@dataclass(frozen=True)
class PlannedRecord:
    """One record to produce; `bad` names the DLQ reason it should get (None = a good one)."""

    record_id: str
    value: bytes | None
    label: int | None
    bad: str | None = None


def bad_value(kind: str, record_id: str, image: np.ndarray, schema: DatasetSchema) -> bytes | None:
    """A record value that ingestion must refuse with reason `kind`."""
    if kind == TOMBSTONE:
        return None
    if kind == NOT_JSON:
        return f"not json: {record_id}".encode()
    good = json.loads(encode_data_record(record_id, 0, image, SOURCE))
    if kind == INVALID_SCHEMA:
        del good["label"]
    elif kind == WRONG_SHAPE:
        c, h, w = schema.shape
        good["image"]["shape"] = [c, h - 1, w]
        good["image"]["data"] = good["image"]["data"][: c * (h - 1) * w]
    elif kind == PIXEL_RANGE:
        good["image"]["data"][0] = 256
    elif kind == LABEL_RANGE:
        good["label"] = schema.num_classes
    else:
        raise ValueError(f"unknown bad record kind {kind!r}; choose from {BAD_KINDS}")
    return json.dumps(good).encode()


def plan_records(
    schema: DatasetSchema,
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    bad: int = 0,
    prefix: str = "rec",
    compact: bool = False,
) -> list[PlannedRecord]:
    """`n` good records (cycling through the samples) with `bad` bad ones spread between them.
    `ConfigError` if the longest record id would not fit the record schema."""
    longest = max(len(f"{prefix}-{n - 1:06d}"), len(f"{prefix}-bad-{bad - 1:04d}") if bad else 0)
    if longest > MAX_RECORD_ID_CHARS:
        room = MAX_RECORD_ID_CHARS - longest + len(prefix)
        raise ConfigError(
            f"--id-prefix makes record ids of up to {longest} characters, over the "
            f"{MAX_RECORD_ID_CHARS} a record id may have: use a prefix of at most {room}"
        )
    good = []
    for i in range(n):
        record_id, label = f"{prefix}-{i:06d}", int(labels[i % len(labels)])
        value = encode_data_record(record_id, label, images[i % len(images)], SOURCE, compact)
        good.append(PlannedRecord(record_id, value, label))
    planned: list[PlannedRecord] = []
    positions = [round((j + 1) * n / (bad + 1)) for j in range(bad)]
    next_bad = 0
    for i in range(n + 1):
        while next_bad < bad and positions[next_bad] == i:
            kind = BAD_KINDS[next_bad % len(BAD_KINDS)]
            record_id = f"{prefix}-bad-{next_bad:04d}"
            bad_bytes = bad_value(kind, record_id, images[next_bad % len(images)], schema)
            planned.append(PlannedRecord(record_id, bad_bytes, None, kind))
            next_bad += 1
        if i < n:
            planned.append(good[i])
    return planned


def publish_records(
    bootstrap: str,
    topic: str,
    records: list[PlannedRecord],
    on_sent: Callable[[int], None] | None = None,
) -> float:
    """Produce the records (acks=all) and wait for every acknowledgement; returns seconds."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024
    )
    started = time.perf_counter()
    try:
        futures = []
        for record in records:
            futures.append(producer.send(topic, key=record.record_id.encode(), value=record.value))
            if on_sent is not None:
                on_sent(1)
        producer.flush()
        for future in futures:
            future.get(timeout=60)
    finally:
        producer.close()
    return time.perf_counter() - started
