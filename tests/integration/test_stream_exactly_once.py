"""`--processing-guarantee exactly_once` on the embedded broker (Tansu), which cannot hold it.

What was observed on Tansu 0.6 and is asserted here:
- aiokafka 0.14 sends InitProducerId v0 only, which Tansu answers with UNKNOWN_SERVER_ERROR
  (versions 0-2 all fail; 3 and later work), so no aiokafka transactional producer starts;
  `streams.init_producer_id` adds v3 and then it does.
- Tansu's transactions then work, but it hands records of aborted transactions to
  read_committed consumers, so the probe (`streams.transactions`) says no and the worker exits 2
  saying why and what to use instead.
- With the probe passed (exactly_once_driver.py) the whole transactional path of the worker
  runs here, through a rebalance (a second worker joins) and a SIGKILL: the outcome topics carry
  transaction markers, the group's offsets (committed only through transactions) reach the end,
  and read with the markers applied (transaction_log.py, what Kafka's read_committed does) every
  request has exactly one committed outcome; Tansu's own read_committed shows exactly the
  aborted ones as duplicates.

The same kill-cycle test with Kafka's own read_committed (no duplicates after three SIGKILLs)
is in test_real_kafka.py, for Apache Kafka (`make test-kafka`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka_fixtures import external_bootstrap
from refusing_broker import refusing_topic_creation
from server_fixtures import REPO_ROOT, wait_until
from stream_fixtures import (
    OUTCOME_TOPICS,
    REQUESTS_TOPIC,
    OutcomeTally,
    RequestTemplate,
    WorkerProcess,
    produce_ids,
    producer,
    publish_lenet,
    running_worker,
)
from transaction_log import CommittedLog, read_committed_log

from streams import init_producer_id
from streams.broker import EmbeddedBroker
from streams.topics import create_topics
from streams.transactions import PROBE_TOPIC, probe_transactions

DRIVER = Path(__file__).with_name("exactly_once_driver.py")
EXACTLY_ONCE = ("--processing-guarantee", "exactly_once")
WAIT_S = 120.0

pytestmark = pytest.mark.skipif(
    external_bootstrap() is not None,
    reason="about the embedded broker; test_real_kafka.py covers Apache Kafka",
)


@pytest.fixture
def bootstrap() -> Iterator[str]:
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


async def _start_transactional_producer(bootstrap: str) -> str:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=uuid.uuid4().hex)
    try:
        await asyncio.wait_for(producer.start(), 20)
        return "started"
    except Exception as exc:
        return type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()


def test_aiokafka_transactions_start_on_the_embedded_broker_only_with_init_producer_id_v3(
    bootstrap: str,
) -> None:
    was_installed = init_producer_id.installed()
    try:
        init_producer_id.uninstall()
        without = asyncio.run(_start_transactional_producer(bootstrap))
        init_producer_id.install()
        with_v3 = asyncio.run(_start_transactional_producer(bootstrap))
    finally:
        (init_producer_id.install if was_installed else init_producer_id.uninstall)()
    assert (without, with_v3) == ("UnknownError", "started")


def test_probe_finds_that_the_embedded_broker_shows_aborted_records(bootstrap: str) -> None:
    verdict = asyncio.run(probe_transactions(bootstrap, timeout_s=10))
    assert verdict.producer_started is True  # InitProducerId v3, abort and commit all work
    assert verdict.aborted_hidden is False  # ... but read_committed readers get aborted records
    assert verdict.supported is False
    assert "aborted transactions" in verdict.detail


def test_exactly_once_worker_exits_2_on_the_embedded_broker(bootstrap: str, tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()  # an empty repository: the check at issue comes after it
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "headrace", "stream", "worker", "--bootstrap", bootstrap,
         "--repository", str(tmp_path / "repo"), *EXACTLY_ONCE],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("error: --processing-guarantee exactly_once needs a broker with ")
    assert f"the embedded Tansu broker at {bootstrap} hands records of aborted" in message
    assert "(Apache Kafka)" in message and "at_least_once" in message
    assert "stream worker ready" not in done.stdout
    assert elapsed < 20, f"took {elapsed:.1f} s"


def test_exactly_once_worker_exits_2_in_one_line_when_the_probe_topic_is_refused(
    tmp_path: Path,
) -> None:
    """A cluster that forbids this client to create the probe's topic (ACLs, a create-topic
    policy): the worker printed kafka-python's traceback and exited 1."""
    (tmp_path / "repo").mkdir()
    with refusing_topic_creation(PROBE_TOPIC.name) as bootstrap:
        done = subprocess.run(
            [sys.executable, "-m", "headrace", "stream", "worker", "--bootstrap", bootstrap,
             "--repository", str(tmp_path / "repo"), *EXACTLY_ONCE],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("error: --processing-guarantee exactly_once first checks"), message
    assert f"at {bootstrap} refused to create the topic {PROBE_TOPIC.name} (" in message
    assert "TopicAuthorizationFailedError" in message and "at_least_once" in message
    assert "stream worker ready" not in done.stdout


def _committed_total(bootstrap: str, group: str) -> int:
    """Offsets the group has committed on the requests topic, summed over its partitions."""
    partitions = [TopicPartition(REQUESTS_TOPIC, p) for p in range(4)]  # the catalogue's 4
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        offsets = admin.list_group_offsets({group: partitions})[group]
    finally:
        admin.close()
    return sum(max(0, meta.offset) for meta in offsets.values())


def _outcomes_per_id(log: CommittedLog) -> Counter[str]:
    return Counter(json.loads(value)["request_id"] for _, value in log.records)


def test_exactly_once_path_through_a_rebalance_and_a_sigkill(
    bootstrap: str, tmp_path: Path
) -> None:
    """Worker A alone, then worker B joins (a rebalance: A keeps some partitions, B takes the
    others), then A is SIGKILLed mid-stream (B takes A's partitions and fences A's producers,
    which aborts their open transactions). Read with the transaction markers applied, every
    request has exactly one outcome."""
    repository = publish_lenet(tmp_path)[0]
    create_topics(bootstrap)
    first = [f"eo1-{i:05d}" for i in range(1000)]
    second = [f"eo2-{i:05d}" for i in range(3000)]
    n = len(first) + len(second)
    group = f"eo-{uuid.uuid4().hex[:8]}"
    tally = OutcomeTally(bootstrap, set(first) | set(second))  # kafka-python, read_committed
    template = RequestTemplate(seed=3)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    worker_a = functools.partial(running_worker, args=EXACTLY_ONCE, entry=(str(DRIVER),))
    try:
        with worker_a(bootstrap, repository, group, logs[0]) as a:
            assert a.fields["guarantee"] == "exactly_once"
            send = producer(bootstrap, linger_ms=20, batch_size=256 * 1024)
            produce_ids(send, first, template)
            tally.wait_for(len(first), "a committed outcome for every request", WAIT_S)
            committed = _wait_committed(bootstrap, group, len(first), tally)
            alone = read_committed_log(bootstrap, OUTCOME_TOPICS)
            with worker_a(bootstrap, repository, group, logs[1]) as b:  # B joins
                produce_ids(send, second, template)
                send.close()
                wait_until(lambda: _results(b) >= 50 and _results(a) >= 50 + len(first), "both")
                a_results = _results(a)
                a.kill()  # mid-stream: A is still working through its partitions
                tally.wait_for(n, "an outcome for every request after the kill", WAIT_S)
                final_committed = _wait_committed(bootstrap, group, n, tally)
                b_results = _results(b)
                assert b.stop() == 0, b.log_tail()
        tally.poll()
    finally:
        tally.close()
    after = read_committed_log(bootstrap, OUTCOME_TOPICS)
    counts = _outcomes_per_id(after)
    print(f"\nexactly-once path: {len(first)} requests -> {len(alone.records)} committed "
          f"outcomes, {alone.markers['commit']} commit markers, {committed} offsets committed; "
          f"then {len(second)} with B joining and A SIGKILLed after {a_results:.0f} results: "
          f"{after.markers['abort']} aborted transactions ({after.aborted_records} outcomes), "
          f"committed outcomes per id {sorted(Counter(counts.values()).items())}, B "
          f"{b_results:.0f} results; the broker's own read_committed showed "
          f"{tally.duplicates} duplicates")  # fmt: skip
    # A alone: one committed outcome per request, produced in transactions whose commits
    # also carried the offsets (under exactly_once offsets only move through transactions).
    assert _outcomes_per_id(alone) == Counter(dict.fromkeys(first, 1))
    assert alone.markers["commit"] > 0 and alone.aborted_records == 0
    assert committed == len(first)
    # Through the rebalances and the kill, read as Kafka's read_committed would: exactly one.
    assert b_results >= 50 and a_results < n
    assert counts == Counter(dict.fromkeys(first + second, 1))
    assert after.open_records == 0 and final_committed == n
    # The embedded broker hands the aborted copies out even to read_committed consumers.
    assert tally.missing() == set() and tally.duplicates == after.aborted_records
    for log in logs:
        text = log.read_text(errors="replace")
        assert "unknown transaction" not in text and "Exception in" not in text, text[-4000:]


def _results(worker: WorkerProcess) -> float:
    return worker.scrape().value("stream_results_total")


def _wait_committed(bootstrap: str, group: str, wanted: int, tally: OutcomeTally) -> int:
    deadline = time.monotonic() + 30
    while (committed := _committed_total(bootstrap, group)) < wanted:
        assert time.monotonic() < deadline, f"offsets committed: {committed} of {wanted}"
        tally.poll()
    return committed
