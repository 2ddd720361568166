"""Records on `data-<dataset>` written to break the ingestion worker (no broker): numbers no
int() reads, JSON nested past Python's recursion limit. Each gets exactly one outcome, a
shard row or a DLQ record saying it was the record's fault; nothing escapes the batch, which
would stop the worker on that record again after every restart (it is never acked)."""

from __future__ import annotations

import numpy as np
import pytest

from streams.codec import MAX_RESULT_BYTES
from streams.data_messages import encode_data_record
from streams.inference import SourceRecord
from streams.ingest import PartitionState, plan_batch
from streams.messages import DLQRecord
from training.datasets.schema import SCHEMAS

DIGITS = SCHEMAS["digits"]
TOPIC = "data-digits"
BIG = b"9" * 5000  # int() reads at most 4,300 digits
DEEP = b"[" * 100_000 + b"]" * 100_000


def _good(record_id: str, label: int = 3) -> bytes:
    return encode_data_record(record_id, label, np.zeros(DIGITS.shape, np.uint8))


def _swap(old: bytes, new: bytes, record_id: str = "h") -> bytes:
    value = _good(record_id)
    assert old in value
    return value.replace(old, new, 1)


HOSTILE = {
    "label": _swap(b'"label":3', b'"label":' + BIG),
    "negative label": _swap(b'"label":3', b'"label":-' + BIG),
    "pixel": _swap(b'"data":[0', b'"data":[' + BIG),
    "shape": _swap(b'"shape":[1', b'"shape":[' + BIG),
    "source": _swap(b'"label":3', b'"label":3,"source":' + BIG),
    "created_at": _swap(b'"label":3', b'"label":3,"created_at":' + BIG),
    "nested pixels": _swap(b'"data":[0', b'"data":[' + DEEP),
    "nested value": DEEP,
}


def _plan(values: list[tuple[bytes | None, bytes | None]]) -> tuple[list[DLQRecord], list[str]]:
    records = [SourceRecord(TOPIC, 0, i, key, value, []) for i, (key, value) in enumerate(values)]
    states = {0: PartitionState(0, DIGITS.num_classes)}
    plan = plan_batch(records, DIGITS, states, "data-dlq")
    for outcome in plan.dlq:  # each can be produced
        assert len(outcome.key or b"") + len(outcome.value) < MAX_RESULT_BYTES
    refused = [DLQRecord.model_validate_json(o.value) for o in plan.dlq]
    return refused, [i for shard in plan.shards for i in shard.record_ids]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_json_python_cannot_read_is_the_records_fault(name: str) -> None:
    """Before: json.loads raised ValueError (more than 4,300 digits) or RecursionError out of
    the batch; `headrace data ingest` exited 3 ('stopping: Exceeds the limit (4300 digits)
    ...'), and again on the same record after every restart, ingesting nothing more of the
    partition."""
    refused, rows = _plan([(b"h", HOSTILE[name]), (b"good", _good("good"))])
    assert rows == ["good"]
    [dlq] = refused
    assert (dlq.request_id, dlq.error_code, dlq.stage) == ("h", "invalid_schema", "decode")
    assert dlq.source is not None and dlq.source.offset == 0
    expected = "nests too deeply" if "nested" in name else "more than 4,300 digits"
    assert expected in dlq.message


@pytest.mark.parametrize(
    "value",
    [b"not json", None, _swap(b'"h"', b'"' + b"x" * 300 + b'"')],
    ids=["not-json", "tombstone", "long-id"],
)
def test_a_refused_record_keyed_by_megabytes_gets_a_dlq_record_that_can_be_produced(
    value: bytes | None,
) -> None:
    """Before: the DLQ record was keyed by the record's own 2 MB key; the producer refused it
    three times (MessageSizeTooLargeError) and the worker exited 3, and again on the same
    record after every restart."""
    huge = b"K" * 2_000_000
    refused, rows = _plan([(huge, value), (b"good", _good("good"))])
    assert rows == ["good"]
    [dlq] = refused
    assert dlq.request_id is None  # no usable id: the source names the record
    assert dlq.source is not None and dlq.source.offset == 0
