"""A cluster that refuses to create headrace's topics (ACLs, a create-topic policy): commands
that create them stop with one line saying which topic the broker refused and why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from refusing_broker import refusing_topic_creation
from server_fixtures import REPO_ROOT


def _headrace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_refused_topic_is_one_line_naming_it(tmp_path: Path) -> None:
    """`topics create` printed kafka-python's traceback (exit 1); `stream worker` said it could
    not reach Kafka and told to start the embedded broker, with the broker answering."""
    (tmp_path / "repo").mkdir()
    with refusing_topic_creation("inference-requests") as bootstrap:
        created = _headrace("topics", "create", "--bootstrap", bootstrap)
        worker = _headrace("stream", "worker", "--bootstrap", bootstrap,
                           "--repository", str(tmp_path / "repo"))  # fmt: skip
    for done in (created, worker):
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(
            f"error: the broker at {bootstrap} refused to create the topic inference-requests "
            "(TopicAuthorizationFailedError: "
        ), line
        assert "Create it beforehand (4 partitions, replication factor 1)" in line
    assert "stream worker ready" not in worker.stdout
