"""The Kafka cluster the integration tests use: a new embedded broker (the default, unchanged),
or the Apache Kafka that HEADRACE_KAFKA_BOOTSTRAP names (`make test-kafka`: the compose stack).

On an external cluster each `kafka_cluster()` first deletes the topics the tests use, so a test
sees what a new embedded broker gives it: no topics, no records, no committed offsets for them.
Because that deletes topics, the cluster must be a test cluster on this machine (loopback
addresses only) and no other consumer group may be active on it (the compose stack's stream
workers would take the tests' requests); otherwise the tests fail at once, saying why.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Iterator

from streams.broker import EmbeddedBroker, answers_metadata
from streams.topics import CATALOGUE, data_topic

BOOTSTRAP_ENV = "HEADRACE_KAFKA_BOOTSTRAP"
# Every topic a test writes to by name; the suite deletes them before each use.
TEST_TOPICS = (
    *(spec.name for spec in CATALOGUE),
    data_topic("digits").name,
    "headrace-ingest-digits-class-counts-changelog",  # the ingestion worker's Faust table
    "requests-json",
    "requests-binary",
    "res",
    "dlq",
)
DELETE_TIMEOUT_S = 60.0
GROUP_IDLE_TIMEOUT_S = 30.0


def external_bootstrap() -> str | None:
    """The external cluster the suite runs against, or None for embedded brokers."""
    return os.environ.get(BOOTSTRAP_ENV) or None


@contextlib.contextmanager
def kafka_cluster() -> Iterator[str]:
    """A bootstrap address for one test or module: a new embedded broker, stopped afterwards,
    or the external cluster with the tests' topics deleted first."""
    bootstrap = external_bootstrap()
    if bootstrap is None:
        with EmbeddedBroker() as broker:
            yield broker.bootstrap
        return
    prepare_external(bootstrap)
    yield bootstrap


def prepare_external(bootstrap: str) -> None:
    """Check that `bootstrap` is a local test cluster nobody else consumes from; empty it."""
    for server in bootstrap.split(","):
        host = server.strip().rpartition(":")[0].strip("[]")
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except OSError:
            addresses = set()
        if not addresses or not all(
            ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses
        ):
            raise AssertionError(
                f"{BOOTSTRAP_ENV}={bootstrap}: the tests delete and recreate headrace's topics, "
                "so they only run against a cluster on this machine (the compose stack: "
                "localhost:9092). Unset it to run on the embedded broker."
            )
    if not answers_metadata(bootstrap, timeout_s=10.0):
        raise AssertionError(
            f"no Kafka answers at {BOOTSTRAP_ENV}={bootstrap}; start it with "
            "`docker compose -f infra/docker-compose.yml up -d --wait kafka` or unset it"
        )
    busy = active_groups(bootstrap)
    deadline = time.monotonic() + GROUP_IDLE_TIMEOUT_S
    while busy and time.monotonic() < deadline:  # a SIGKILLed member stays until its session
        time.sleep(0.5)  # times out (Faust's: 2 s); a running worker stays for good
        busy = active_groups(bootstrap)
    if busy:
        raise AssertionError(
            f"consumer groups {busy} are active on {bootstrap} and would take the tests' "
            "records; stop them (`docker compose -f infra/docker-compose.yml stop "
            "stream-worker serve`), as `make test-kafka` does"
        )
    delete_topics(bootstrap, TEST_TOPICS)


def active_groups(bootstrap: str) -> list[str]:
    """Consumer groups with members right now: ListGroups v4+ (Kafka >= 2.6) reports each
    group's state, `Empty` once its members left. A broker that reports no state, or
    `Unknown` (the embedded one), shows no group as active."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        groups = admin.list_groups()
    finally:
        admin.close()
    idle = {"Empty", "Dead", "Unknown", "", None}
    return sorted(str(g["group_id"]) for g in groups if g.get("group_state") not in idle)


def delete_topics(bootstrap: str, names: tuple[str, ...]) -> None:
    """Delete those of `names` that exist and wait until the cluster no longer lists them
    (creating a topic that is still being deleted fails)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        present = set(admin.list_topics()) & set(names)
        if present:
            admin.delete_topics(sorted(present), timeout_ms=30_000)
        deadline = time.monotonic() + DELETE_TIMEOUT_S
        while present:
            present = set(admin.list_topics()) & present
            if present and time.monotonic() > deadline:
                raise AssertionError(f"topics {sorted(present)} still listed after deletion")
            if present:
                time.sleep(0.2)
    finally:
        admin.close()
