"""`headrace topics create --replication-factor`: the catalogue with the copies a cluster asks
for (the compose file's three-broker variant creates its topics with 3)."""

from __future__ import annotations

import subprocess
import sys

from kafka_fixtures import kafka_cluster

from streams.topics import CATALOGUE, list_topics


def _create(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace", "topics", "create", "--bootstrap", bootstrap, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_topics_create_with_a_replication_factor() -> None:
    with kafka_cluster() as bootstrap:
        done = _create(bootstrap, "--replication-factor", "1")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == len(CATALOGUE)
        assert all(line.endswith("replication factor 1") for line in lines), lines
        assert {spec.name for spec in CATALOGUE} <= set(list_topics(bootstrap))
        # what exists is reported as the cluster has it, not as asked
        again = _create(bootstrap, "--replication-factor", "3")
        assert again.returncode == 0, again.stderr
        lines = again.stdout.splitlines()
        assert all(" exists " in line and "(left as they are)" in line for line in lines), lines
        assert not any("replication factor 3" in line for line in lines), lines
    for args, message in [
        (["--replication-factor", "0"], "--replication-factor"),
        (["--dataset", "nosuch"], "no dataset 'nosuch'"),
        ([], "cannot reach Kafka at 127.0.0.1:1"),
    ]:
        refused = _create("127.0.0.1:1", *args)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
