"""The streaming benchmark's Kafka side: producing the request records, reading them back
(the broker ceiling), and reading outcomes until every request has one."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.procs import Child

FIRST_OUTCOME_TIMEOUT_S = 120.0
STALL_TIMEOUT_S = 60.0
FETCH_BYTES = 8 * 1024 * 1024

Encoded = list[tuple[bytes, bytes, list[tuple[str, bytes]]]]  # key, value, headers


@dataclass
class Outcomes:
    """What the reader saw: outcome times by request id and DLQ count."""

    produced_at: dict[str, float] = field(default_factory=dict)
    created_at: dict[str, float] = field(default_factory=dict)
    queue_s: dict[str, float] = field(default_factory=dict)  # request record's timestamp -> run
    dlq: int = 0
    wall_s: float = 0.0

    def rate(self) -> float:
        times = sorted(self.produced_at.values())
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return (len(times) - 1) / span if span > 0 else float("nan")


def new_producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",  # DESIGN.md: acks=0 loses data on the embedded broker
        linger_ms=5,
        batch_size=1024 * 1024,
        max_request_size=FETCH_BYTES,
    )


def new_reader(bootstrap: str, topics: list[str]) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",  # as `headrace results` reads (exactly-once outcomes)
        max_partition_fetch_bytes=FETCH_BYTES,
        fetch_max_bytes=4 * FETCH_BYTES,
    )


def create(bootstrap: str, *names: str) -> None:
    from streams.topics import TopicSpec, create_topics

    create_topics(bootstrap, [TopicSpec(name=name) for name in names])


def produce(bootstrap: str, topic: str, records: Encoded) -> float:
    """Produce every record and wait for every acknowledgement; seconds taken."""
    producer = new_producer(bootstrap)
    try:
        started = time.perf_counter()
        futures = [producer.send(topic, key=k, value=v, headers=h) for k, v, h in records]
        producer.flush()
        for future in futures:
            future.get(timeout=60)
        return time.perf_counter() - started
    finally:
        producer.close()


def consume_count(bootstrap: str, topic: str, n: int) -> float:
    """Consume `n` records from the start of `topic` (counting them, as DESIGN.md says); seconds."""
    reader = new_reader(bootstrap, [topic])
    try:
        started = time.perf_counter()
        seen = 0
        deadline = started + FIRST_OUTCOME_TIMEOUT_S
        while seen < n:
            for records in reader.poll(timeout_ms=200).values():
                seen += len(records)
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {seen} of {n} records consumed back from {topic}")
        return time.perf_counter() - started
    finally:
        reader.close()


def read_outcomes(
    bootstrap: str, results: str, dlq: str, n: int, child: Child | None, started: float
) -> Outcomes:
    """Consume results and DLQ records until `n` distinct request ids have an outcome."""
    out = Outcomes()
    reader = new_reader(bootstrap, [results, dlq])
    last_new = time.perf_counter()
    try:
        while len(out.produced_at) < n:
            grew = False
            for records in reader.poll(timeout_ms=200).values():
                for record in records:
                    body = json.loads(record.value)
                    rid = body.get("request_id") or f"?{record.offset}"
                    if rid in out.produced_at:
                        continue
                    grew = True
                    if record.topic == dlq:
                        out.dlq += 1
                        out.produced_at[rid] = float(body["failed_at"])
                    else:
                        out.produced_at[rid] = float(body["produced_at"])
                        out.queue_s[rid] = float(body["timings"]["queue_s"])
                        if body.get("request_created_at") is not None:
                            out.created_at[rid] = float(body["request_created_at"])
            now = time.perf_counter()
            if grew:
                last_new = now
            limit = STALL_TIMEOUT_S if out.produced_at else FIRST_OUTCOME_TIMEOUT_S
            if now - last_new > limit:
                raise RuntimeError(
                    f"stalled at {len(out.produced_at)} of {n} outcomes on {results}"
                    + (f"; consumer log:\n{child.tail()}" if child is not None else "")
                )
            if child is not None and child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
        out.wall_s = time.perf_counter() - started
        return out
    finally:
        reader.close()
