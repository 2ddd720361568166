"""Read result and DLQ records back and summarise them (what `headrace results` does)."""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from headrace.errors import ConfigError
from streams.messages import DLQRecord, InferenceResultMessage


@dataclass
class Summary:
    """Counts, end-to-end latency and, with a manifest, accuracy (first outcome per id)."""

    results: int = 0
    dlq: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    correct: int = 0
    labelled: int = 0
    request_ids: set[str] = field(default_factory=set)
    duplicates: int = 0
    others: int = 0  # records skipped: their request is not among those asked about

    def latency_ms(self, percentile: float) -> float | None:
        if not self.latencies_s:
            return None
        return float(np.percentile(self.latencies_s, percentile) * 1000)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def read_manifest(path: Path) -> dict[str, int]:
    """request_id -> true label, from the file `headrace produce --manifest` wrote."""
    labels: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            labels[str(row["request_id"])] = int(row["label"])
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ConfigError(
                f"{path}, line {number}: not a manifest line ({problem}); a manifest has one "
                'JSON object per line, {"request_id": ..., "label": ...}, as written by '
                "`headrace produce --manifest`"
            ) from None
    return labels


def predicted_class(result: InferenceResultMessage) -> int | None:
    """The first output's best class, for classifiers: its argmax, or, for an output asked
    for as classes ("value:index[:label]" strings, best first), the first one's index."""
    if not result.outputs or not result.outputs[0].data:
        return None
    first = result.outputs[0]
    if first.datatype == "BYTES":
        fields = str(first.data[0]).split(":")
        return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return int(np.argmax(np.asarray(first.data, dtype=np.float64)))


def consume(
    bootstrap: str, topics: list[str], follow: bool, idle_s: float = 5.0
) -> Generator[tuple[str, bytes | None], None, None]:
    """(topic, value) of every committed record from the beginning; stops after `idle_s`
    unless following."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # Outcomes of an exactly-once worker are transactional: read only committed ones (the
        # same as read_uncommitted for records produced outside transactions).
        isolation_level="read_committed",
        consumer_timeout_ms=-1 if follow else int(idle_s * 1000),
    )
    try:
        for record in consumer:
            yield record.topic, record.value
    finally:
        consumer.close()


def add_record(
    summary: Summary,
    topic: str,
    value: bytes | None,
    dlq_topic: str,
    labels: Mapping[str, int] | None = None,
) -> InferenceResultMessage | DLQRecord | None:
    """Fold one record into `summary`; returns it parsed. With `labels` (a manifest), only
    the records of its requests count: others, like unreadable ones, give None."""
    if value is None:
        return None
    record: InferenceResultMessage | DLQRecord
    try:
        record = (
            DLQRecord.model_validate_json(value)
            if topic == dlq_topic
            else InferenceResultMessage.model_validate_json(value)
        )
    except ValidationError:
        return None
    if labels is not None and record.request_id not in labels:
        summary.others += 1
        return None
    request_id = record.request_id
    if isinstance(record, DLQRecord):
        summary.dlq[record.error_code] = summary.dlq.get(record.error_code, 0) + 1
    else:
        summary.results += 1
        if record.request_created_at is not None:
            summary.latencies_s.append(record.produced_at - record.request_created_at)
        if labels is not None and request_id not in summary.request_ids:
            summary.labelled += 1
            summary.correct += int(predicted_class(record) == labels[record.request_id])
    if request_id is not None:
        if request_id in summary.request_ids:
            summary.duplicates += 1
        summary.request_ids.add(request_id)
    return record
