"""Helpers for the stream worker's integration tests: a published LeNet-5, the worker process
(started and always stopped by its pid), request records and readers of the outcome topics.

Outcomes are read from every partition of `inference-results` and `inference-dlq` from the
earliest offset with a group-less consumer: the embedded broker's end offsets are wrong, so
records are counted by consuming them (DESIGN.md, "Known facts about the embedded broker").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from server_fixtures import (
    REPO_ROOT,
    Metrics,
    export_lenet,
    lenet_config,
    publish,
    stop_process,
    wait_for_ready_line,
)

from serving.model_config import PreprocessingSpec

READY_PREFIX = "stream worker ready "
MODEL = "lenet"
PREPROCESSING = PreprocessingSpec(mean=[0.1307], std=[0.3081])
OUTCOME_TOPICS = ("inference-results", "inference-dlq")
REQUESTS_TOPIC = "inference-requests"


def publish_lenet(folder: Path) -> tuple[Path, Path]:
    """A repository with LeNet-5 (seed 0, batches up to 64, pixel preprocessing):
    (repository folder, ONNX file)."""
    model_file = export_lenet(folder / "lenet.onnx", seed=0)
    config = lenet_config(MODEL, max_batch_size=64, preprocessing=PREPROCESSING)
    publish(folder / "repo", config, model_file)
    return folder / "repo", model_file


@dataclass
class WorkerProcess:
    process: subprocess.Popen[str]
    fields: dict[str, str]
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]

    def scrape(self) -> Metrics:
        url = f"http://127.0.0.1:{self.fields['metrics']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return Metrics(response.read().decode())

    def kill(self) -> None:
        """SIGKILL by pid: no chance to commit or finish anything."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 40.0) -> int:
        """SIGTERM by pid and wait; SIGKILL if it hangs. The exit code."""
        return stop_process(self.process, timeout_s)


@contextlib.contextmanager
def running_worker(
    bootstrap: str,
    repository: Path,
    group: str,
    log_file: Path,
    concurrency: int = 2,
    args: Sequence[str] = (),
    ready_timeout_s: float = 60.0,
    entry: Sequence[str] = ("-m", "headrace"),
) -> Iterator[WorkerProcess]:
    """`headrace stream worker` until its ready line; stopped by pid when the block exits.
    `entry` replaces `-m headrace` (a driver script that runs the same CLI)."""
    command = [sys.executable, *entry, "stream", "worker",
               "--repository", str(repository), "--bootstrap", bootstrap, "--group", group,
               "--concurrency", str(concurrency), "--max-batch", "64", "--max-delay-ms", "5",
               "--metrics-port", "0", "--loglevel", "info", *args]  # fmt: skip
    with log_file.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True
        )
    worker = WorkerProcess(process, {}, log_file)
    try:
        line = wait_for_ready_line(process, READY_PREFIX, log_file, "the worker", ready_timeout_s)
        worker.fields = dict(p.split("=", 1) for p in line.split()[3:])
        yield worker
    finally:
        worker.stop()


def leader_leaves_mid_rebalance(bootstrap: str, group: str, protocol: str = "x") -> None:
    """Join `group` as its only member, hence its leader, and leave it (LeaveGroup) before
    the SyncGroup that would hand out the assignment: what a worker stopped in the middle of
    a rebalance does. The embedded broker never finishes a rebalance of that group again.
    `protocol` is the assignor the member offers; a kafka-python consumer (the training
    agent) refuses to join a group whose only protocol it lacks, e.g. "range" it has."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.coordination import FindCoordinatorRequest
    from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest

    async def join_and_leave() -> None:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        await client.bootstrap()
        try:
            found = await client.send(client.get_random_node(), FindCoordinatorRequest(group, 0))
            coordinator = found.coordinator_id
            member = ""  # the first answer is MEMBER_ID_REQUIRED, with the id to join with
            for _ in range(2):
                join = JoinGroupRequest(
                    group, 2000, 10000, member, None, "consumer", [(protocol, b"")]
                )
                joined = await client.send(coordinator, join)
                member = joined.member_id
                if joined.error_code == 0:
                    break
            assert joined.error_code == 0 and joined.leader_id == member, joined
            left = await client.send(coordinator, LeaveGroupRequest(group, member))
            assert left.error_code == 0, left
        finally:
            await client.close()

    asyncio.run(join_and_leave())


# -- requests ------------------------------------------------------------------------------


def producer(bootstrap: str, **options: Any) -> KafkaProducer:
    settings: dict[str, Any] = {"acks": "all", "linger_ms": 5, **options}
    return KafkaProducer(bootstrap_servers=bootstrap, **settings)


def json_request(request_id: str, array: np.ndarray, datatype: str = "FP32", **extra: Any) -> bytes:
    body = {
        "request_id": request_id,
        "model": MODEL,
        "inputs": [
            {"name": "input", "datatype": datatype, "shape": list(array.shape),
             "data": array.ravel().tolist()}
        ],
        **extra,
    }  # fmt: skip
    return json.dumps(body).encode()


class RequestTemplate:
    """One pre-encoded UINT8 image request; only its id changes (fast enough for 10k records)."""

    PLACEHOLDER = "@@request-id@@"

    def __init__(self, seed: int = 0) -> None:
        image = np.random.default_rng(seed).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
        self._head, self._tail = json_request(self.PLACEHOLDER, image, "UINT8").split(
            self.PLACEHOLDER.encode()
        )

    def value(self, request_id: str) -> bytes:
        return self._head + request_id.encode() + self._tail


def produce_ids(send: KafkaProducer, ids: Sequence[str], template: RequestTemplate) -> None:
    """Send one request per id and wait for every acknowledgement (acks=all)."""
    futures = [
        send.send(REQUESTS_TOPIC, key=request_id.encode(), value=template.value(request_id))
        for request_id in ids
    ]
    send.flush()
    for future in futures:
        future.get(timeout=60)


# -- outcomes ------------------------------------------------------------------------------


def outcome_consumer(bootstrap: str) -> KafkaConsumer:
    """Assigned to every partition of both outcome topics (they must exist), from the start;
    only committed records, as exactly-once readers must read (no effect on records produced
    outside transactions)."""
    consumer = KafkaConsumer(  # no group: assigned partitions read from the start, no join wait
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    consumer.assign(
        [
            TopicPartition(topic, partition)
            for topic in OUTCOME_TOPICS
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
    )
    return consumer


@dataclass
class OutcomeTally:
    """Counts outcomes (result or DLQ) per wanted request id as they are read."""

    bootstrap: str
    wanted: set[str]
    counts: Counter[str] = field(default_factory=Counter)
    topics: Counter[str] = field(default_factory=Counter)  # outcomes per topic (first per id)
    _consumer: KafkaConsumer | None = None

    @property
    def distinct(self) -> int:
        return len(self.counts)

    @property
    def duplicates(self) -> int:
        """Outcome records beyond the first for each id (at-least-once allows them)."""
        return sum(self.counts.values()) - len(self.counts)

    def missing(self) -> set[str]:
        return self.wanted - set(self.counts)

    def poll(self) -> None:
        if self._consumer is None:
            self._consumer = outcome_consumer(self.bootstrap)
        for records in self._consumer.poll(timeout_ms=200).values():
            for record in records:
                name = json.loads(record.value).get("request_id")
                if name in self.wanted:
                    if name not in self.counts:
                        self.topics[record.topic] += 1
                    self.counts[name] += 1

    def wait_for(self, distinct: int, what: str, timeout_s: float = 240.0) -> None:
        """Read until `distinct` wanted ids have an outcome; fail after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.distinct < distinct:
            if time.monotonic() > deadline:
                missing = sorted(self.missing())[:5]
                raise AssertionError(
                    f"timed out after {timeout_s:g} s waiting for {what}: {self.distinct} of "
                    f"{len(self.wanted)} ids have an outcome; missing e.g. {missing}"
                )
            self.poll()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def kill_cycles(
    bootstrap: str,
    repository: Path,
    ids: Sequence[str],
    kill_at: Sequence[int],
    tally: OutcomeTally,
    folder: Path,
    seed: int,
    guarantee: str = "at_least_once",
    drain_timeout_s: float = 240.0,
) -> list[int]:
    """Stream `ids` into a worker of a new group, SIGKILL it once `kill_at[i]` requests have an
    outcome and start a new one, for each count; the last worker drains the stream and must stop
    cleanly. Returns how many requests had an outcome right after each kill. Every worker runs
    with the processing `guarantee` (and says so when ready) and is stopped by pid."""
    group = f"kill-{uuid.uuid4().hex[:8]}"
    observed_at_kill: list[int] = []
    args = ("--processing-guarantee", guarantee)
    for run in range(len(kill_at) + 1):
        log_file = folder / f"worker-{run}.log"
        with running_worker(bootstrap, repository, group, log_file, args=args) as worker:
            assert worker.fields["guarantee"] == guarantee  # exactly-once: the probe passed
            if run == 0:  # the worker created the topics; now the stream starts
                send = producer(bootstrap, linger_ms=20, batch_size=256 * 1024)
                produce_ids(send, ids, RequestTemplate(seed=seed))
                send.close()
            if run < len(kill_at):
                tally.wait_for(kill_at[run], f"{kill_at[run]} outcomes before kill {run + 1}")
                worker.kill()
                observed_at_kill.append(tally.distinct)
            else:
                tally.wait_for(len(ids), "an outcome for every request", drain_timeout_s)
                assert worker.stop() == 0, worker.log_tail()
    tally.poll()  # a last look for late duplicates
    return observed_at_kill


def collect(
    bootstrap: str,
    wanted: set[str],
    timeout_s: float = 120.0,
    by_payload: AbstractSet[str] = frozenset(),
    duplicates: list[str] | None = None,
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Outcomes of `wanted` request ids (and of DLQ records whose payload is in `by_payload`):
    id (or payload) -> (topic, parsed value). A second outcome for one id fails the test,
    unless `duplicates` is given: then its id is appended there (at-least-once allows it)."""
    consumer = outcome_consumer(bootstrap)
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < len(wanted) + len(by_payload):
            if time.monotonic() > deadline:
                missing = sorted((wanted | by_payload) - set(found))[:5]
                raise AssertionError(f"{len(missing)}+ requests without an outcome: {missing}")
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    value = json.loads(record.value)
                    name = value.get("request_id")
                    if name is None and value.get("payload") in by_payload:
                        name = value["payload"]
                    if name in wanted or name in by_payload:
                        if name in found:
                            assert duplicates is not None, f"two outcomes for {name}"
                            duplicates.append(name)
                        found[name] = (record.topic, value)
    finally:
        consumer.close()
    return found
