"""Read a topic's log as a read_committed consumer of Apache Kafka would see it, on a broker that
does not filter aborted records itself (the embedded Tansu broker).

Tansu writes the transaction markers (a control batch with an ABORT or COMMIT record after each
transaction of a producer) but answers every fetch with an empty list of aborted transactions,
so consumers hand the aborted records out. This reader fetches the raw record batches
(isolation level read_uncommitted) and applies the markers itself: records of a transactional
producer are kept back until that producer's next marker, then released on COMMIT and dropped
on ABORT; records of a transaction with no marker yet are not returned; records produced outside
transactions are returned as they are.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer
from kafka.net.compat import KafkaNetClient
from kafka.protocol.consumer.fetch import FetchRequest
from kafka.record.memory_records import MemoryRecords

FETCH_VERSION = 4  # topic names, isolation level, aborted-transaction list (Kafka >= 0.11)
READ_UNCOMMITTED = 0
FETCH_BYTES = 8 * 1024 * 1024
ABORT, COMMIT = 0, 1  # control record types


@dataclass
class CommittedLog:
    """The committed records of some topics (topic, value) and what the markers said."""

    records: list[tuple[str, bytes]] = field(default_factory=list)
    markers: Counter[str] = field(default_factory=Counter)  # "commit" / "abort"
    aborted_records: int = 0
    open_records: int = 0  # in a transaction with no marker yet


def read_committed_log(bootstrap: str, topics: tuple[str, ...]) -> CommittedLog:
    """Every partition of `topics` from offset 0 to its high watermark, markers applied."""
    lookup = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = {t: sorted(lookup.partitions_for_topic(t) or ()) for t in topics}
    finally:
        lookup.close()
    client = KafkaNetClient(
        bootstrap_servers=[bootstrap], receive_message_max_bytes=2 * FETCH_BYTES
    )
    log = CommittedLog()
    try:
        node = client.least_loaded_node(bootstrap_fallback=True)
        for topic, numbers in partitions.items():
            for partition in numbers:
                _read_partition(client, node, topic, partition, log)
    finally:
        client.close()
    return log


def _read_partition(
    client: KafkaNetClient, node: object, topic: str, partition: int, log: CommittedLog
) -> None:
    pending: defaultdict[int, list[bytes]] = defaultdict(list)  # producer id -> held values
    offset = 0
    while True:
        part = _fetch(client, node, topic, partition, offset)
        records = MemoryRecords(part.records)
        fetched_any = False
        while (batch := records.next_batch()) is not None:
            fetched_any = True
            offset = batch.next_offset
            if batch.is_control_batch:
                held = pending.pop(batch.producer_id, [])
                for marker in batch:
                    if marker.type == COMMIT:
                        log.records.extend((topic, value) for value in held)
                        log.markers["commit"] += 1
                    elif marker.type == ABORT:
                        log.aborted_records += len(held)
                        log.markers["abort"] += 1
            elif batch.is_transactional:
                pending[batch.producer_id].extend(bytes(r.value or b"") for r in batch)
            else:
                log.records.extend((topic, bytes(r.value or b"")) for r in batch)
        if not fetched_any or offset >= part.high_watermark:
            break
    log.open_records += sum(len(held) for held in pending.values())


def _fetch(client: KafkaNetClient, node: object, topic: str, partition: int, offset: int) -> Any:
    wanted = FetchRequest.FetchTopic.FetchPartition(
        partition=partition, fetch_offset=offset, partition_max_bytes=FETCH_BYTES
    )
    request = FetchRequest(
        version=FETCH_VERSION,
        replica_id=-1,
        max_wait_ms=100,
        min_bytes=0,
        max_bytes=FETCH_BYTES,
        isolation_level=READ_UNCOMMITTED,
        topics=[FetchRequest.FetchTopic(topic=topic, partitions=[wanted])],
    )
    response = client.send_and_receive(node, request, timeout_ms=10_000)
    (answer,) = response.responses
    (part,) = answer.partitions
    assert part.error_code == 0, f"fetch {topic}-{partition}@{offset}: error {part.error_code}"
    return part
