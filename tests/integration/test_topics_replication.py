"""`headrace topics create --replication-factor`: the catalogue with the copies a cluster asks
for (the compose file's three-broker variant creates its topics with 3)."""

from __future__ import annotations

import subprocess
import sys

from kafka_fixtures import kafka_cluster

from streams.topics import CATALOGUE, list_topics


def test_topics_create_with_a_replication_factor() -> None:
    with kafka_cluster() as bootstrap:
        done = subprocess.run(
            [sys.executable, "-m", "headrace", "topics", "create", "--bootstrap", bootstrap,
             "--replication-factor", "1"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == len(CATALOGUE)
        assert all(line.endswith("replication factor 1") for line in lines), lines
        assert {spec.name for spec in CATALOGUE} <= set(list_topics(bootstrap))
        again = subprocess.run(  # what exists is reported as the cluster has it, not as asked
            [sys.executable, "-m", "headrace", "topics", "create", "--bootstrap", bootstrap,
             "--replication-factor", "3"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        lines = again.stdout.splitlines()
        assert all(" exists " in line and "(left as they are)" in line for line in lines), lines
        assert not any("replication factor 3" in line for line in lines), lines
    refused = subprocess.run(
        [sys.executable, "-m", "headrace", "topics", "create", "--bootstrap", "127.0.0.1:1",
         "--replication-factor", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "--replication-factor" in refused.stderr
    for args, message in [
        (["--dataset", "nosuch"], "no dataset 'nosuch'"),
        ([], "cannot reach Kafka at 127.0.0.1:1"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "headrace", "topics", "create", "--bootstrap", "127.0.0.1:1",
             *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2 and message in done.stderr, done.stderr
