"""Training data through Kafka on a real broker: `headrace data publish` -> `headrace data ingest`
(a Faust worker process) -> shards, `data-dlq` and the class-counts table -> training on the
shards "up to offset X".

The worker runs as a subprocess started here and always stopped by its pid. One broker serves
the module, and the `ingested` fixture ingests the first records into a data root once; a test
that ingests more works on its own copy of that root, so no test depends on another one's
leftovers or on the order the tests run in.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka_fixtures import kafka_cluster
from server_fixtures import REPO_ROOT, pump, stop_process

from headrace.errors import HeadraceError
from streams.data_producer import BAD_KINDS, plan_records, publish_records
from streams.ingest import PartitionState
from streams.ingest_app import changelog_topic, default_group
from streams.ingest_profile import read_class_counts
from streams.messages import DLQRecord
from streams.topics import CATALOGUE, create_topics, data_topic
from training.datasets import load_raw
from training.datasets.schema import SCHEMAS
from training.datasets.shards import coverage, list_shards, read_rows, shards_dir

READY_PREFIX = "data ingest ready "
DIGITS = SCHEMAS["digits"]
TOPIC = data_topic("digits").name
FIRST, BAD, SECOND = 240, 6, 200


@dataclass
class Ingestion:
    bootstrap: str
    root: Path
    log_dir: Path

    @property
    def shards(self) -> Path:
        return shards_dir(self.root, "digits")


@dataclass
class Ingested:
    """The first records, ingested by a worker that then stopped: read its root, never change it."""

    ingestion: Ingestion
    profile: dict[str, Any]  # `headrace data profile --ingested --json` while the worker ran
    stop_code: int

    def copy(self, folder: Path) -> Ingestion:
        """The same broker and a copy of the data root in `folder`, to ingest more into."""
        shutil.copytree(self.ingestion.root, folder / "data")
        return Ingestion(self.ingestion.bootstrap, folder / "data", folder)


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with kafka_cluster() as bootstrap:
        create_topics(bootstrap, [*CATALOGUE, data_topic("digits")])
        yield bootstrap


@pytest.fixture(scope="module")
def ingested(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    """FIRST good and BAD bad records published with the CLI and ingested, then a clean stop."""
    folder = tmp_path_factory.mktemp("ingest")
    ingestion = Ingestion(broker, folder / "data", folder)
    address = ("--dataset", "digits", "--bootstrap", broker)
    with ingest_worker(ingestion, "first") as worker:
        out = headrace("data", "publish", *address, "--n", f"{FIRST}", "--bad", f"{BAD}",
                       "--id-prefix", "t1")  # fmt: skip
        assert f"published {FIRST} records and {BAD} bad ones" in out
        profile = json.loads(
            headrace("data", "profile", *address, "--ingested", "--json", "--expect", f"{FIRST}")
        )
        code = stop_process(worker, timeout_s=90)  # SIGTERM: a clean stop, slow under load
    return Ingested(ingestion, profile, code)


@contextlib.contextmanager
def ingest_worker(ingestion: Ingestion, name: str) -> Iterator[subprocess.Popen[str]]:
    """`headrace data ingest` until its ready line; stopped by pid when the block exits."""
    command = [sys.executable, "-m", "headrace", "data", "ingest", "--dataset", "digits",
               "--bootstrap", ingestion.bootstrap, "--data-root", str(ingestion.root),
               "--flush-records", "50", "--flush-interval-s", "0.3",
               "--loglevel", "info"]  # fmt: skip
    log_file = ingestion.log_dir / f"{name}.log"
    with log_file.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True
        )
    try:
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=pump, args=(process.stdout, lines), daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=90)
            except queue.Empty:
                raise AssertionError("no ready line:\n" + log_file.read_text()[-3000:]) from None
            if line is None:
                raise AssertionError("the worker exited:\n" + log_file.read_text()[-3000:])
            if line.startswith(READY_PREFIX):
                fields = dict(p.split("=", 1) for p in line.split()[3:])
                assert fields["table"] == changelog_topic(default_group("digits"))
                break
        yield process
    finally:
        stop_process(process, timeout_s=40)


def headrace(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "headrace", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def expected_counts(n: int) -> list[int]:
    labels = load_raw("digits").data.labels
    return np.bincount(labels[np.arange(n) % len(labels)], minlength=10).tolist()


def read_dlq(bootstrap: str, wanted: int, timeout_s: float = 60.0) -> list[DLQRecord]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    found: list[DLQRecord] = []
    try:
        partitions = consumer.partitions_for_topic("data-dlq") or set()
        consumer.assign([TopicPartition("data-dlq", p) for p in partitions])
        deadline = time.monotonic() + timeout_s
        while len(found) < wanted and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                found.extend(DLQRecord.model_validate_json(r.value) for r in records)
    finally:
        consumer.close()
    return found


def test_good_records_reach_the_shards_bad_ones_the_dlq_and_the_table_counts_them(
    ingested: Ingested,
) -> None:
    ingestion, profile = ingested.ingestion, ingested.profile
    assert ingested.stop_code == 0
    assert profile["records"] == FIRST
    assert list(profile["class_counts"].values()) == expected_counts(FIRST)
    assert profile["source"] == changelog_topic(default_group("digits"))

    rows = read_rows(ingestion.shards, DIGITS)
    assert len(rows) == FIRST and rows.duplicates == 0
    assert sorted(rows.record_ids.tolist()) == [f"t1-{i:06d}" for i in range(FIRST)]
    raw = load_raw("digits").data
    for record_id, label, pixels in zip(rows.record_ids, rows.labels, rows.images, strict=True):
        index = int(str(record_id).rsplit("-", 1)[1])
        assert label == raw.labels[index] and np.array_equal(pixels, raw.images[index])
    covered = coverage(list_shards(ingestion.shards))
    assert sum(covered.values()) == FIRST + BAD  # every record, good or bad, is covered once
    for partition, progress in profile["partitions"].items():
        assert progress["next_offset"] == covered[int(partition)]

    refused = read_dlq(ingestion.bootstrap, BAD)
    assert Counter(r.error_code for r in refused) == Counter(BAD_KINDS)
    for record in refused:
        assert record.request_id is not None and record.request_id.startswith("t1-bad-")
        assert record.source is not None and record.source.topic == TOPIC
        assert record.message and (record.payload is not None) == (record.error_code != "tombstone")


def test_the_ingested_profile_is_read_whole_or_refused(ingested: Ingested) -> None:
    # --timeout-s 0 (or too short a one) printed a profile of the records read so far: none.
    table = changelog_topic(default_group("digits"))
    with pytest.raises(HeadraceError, match="still being read when the 0.001 s timeout ran out"):
        read_class_counts(ingested.ingestion.bootstrap, table, "digits", timeout_s=0.001)
    ingested_from = ("--ingested", "--bootstrap", ingested.ingestion.bootstrap)
    for flags, message in [
        ((*ingested_from, "--timeout-s", "0.001"), "still being read when the 0.001 s timeout"),
        ((*ingested_from, "--timeout-s", "0"), "'--timeout-s': 0.0 is not in the range x>0"),
        ((*ingested_from, "--expect", "-5"), "'--expect': -5 is not in the range x>=1"),
        ((*ingested_from, "--data-dir", "somewhere"), "--data-dir is for the dataset's files"),
        (("--expect", "5"), "--expect needs --ingested"),  # was ignored: the files' profile
        (("--group", "g", "--timeout-s", "5"), "--group, --timeout-s need --ingested"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "headrace", "data", "profile", "--dataset", "digits", *flags],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2 and message in done.stderr, (flags, done.stderr)


def test_a_data_root_that_cannot_hold_shards_is_refused_at_start(
    broker: str, tmp_path: Path
) -> None:
    # It said "data ingest ready" and exited 3 at the first record.
    (tmp_path / "file").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "headrace", "data", "ingest", "--dataset", "digits",
         "--bootstrap", broker, "--data-root", str(tmp_path / "file" / "data")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: cannot write shards to ") and not done.stdout


def test_a_killed_worker_resumes_without_losing_or_double_counting(
    ingested: Ingested, tmp_path: Path
) -> None:
    ingestion = ingested.copy(tmp_path)  # the group's offsets and table go on from the first run
    before = len(list_shards(ingestion.shards))
    schema_records = load_raw("digits").data
    planned = plan_records(DIGITS, schema_records.images, schema_records.labels, SECOND, 0, "t2")
    with ingest_worker(ingestion, "killed") as worker:
        sender = threading.Thread(
            target=publish_records, args=(ingestion.bootstrap, TOPIC, planned), daemon=True
        )
        sender.start()
        deadline = time.monotonic() + 60
        while len(list_shards(ingestion.shards)) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        worker.kill()  # SIGKILL by pid: mid-stream, offsets possibly not committed
        worker.wait(timeout=10)
        sender.join(timeout=60)
    assert len(list_shards(ingestion.shards)) > before, "the worker wrote nothing before the kill"
    with ingest_worker(ingestion, "restarted") as worker:
        counts = read_class_counts(
            ingestion.bootstrap,
            changelog_topic(default_group("digits")),
            "digits",
            expect=FIRST + SECOND,
            timeout_s=90,
        )
        assert stop_process(worker, timeout_s=90) == 0  # a loaded machine stops slowly
    rows = read_rows(ingestion.shards, DIGITS)
    assert len(rows) == FIRST + SECOND
    assert len(set(rows.record_ids.tolist())) == FIRST + SECOND  # nothing lost, nothing twice
    assert sum(c.records for c in counts.values()) == FIRST + SECOND
    for partition, table in counts.items():  # the table agrees with the shards
        assert PartitionState.from_shards(ingestion.shards, DIGITS, partition).agrees_with(table)
    totals = np.sum([c.counts for c in counts.values()], axis=0).tolist()
    assert totals == (np.array(expected_counts(FIRST)) + expected_counts(SECOND)).tolist()


def test_training_on_shards_up_to_an_offset_uses_those_records_and_records_the_bounds(
    ingested: Ingested, tmp_path: Path
) -> None:
    from serving.repository import ModelRepository
    from training.config import TrainConfig
    from training.datasets.shards import ShardSource
    from training.recipe import run_training

    ingestion = ingested.ingestion
    covered = coverage(list_shards(ingestion.shards))
    assert sorted(covered) == [0, 1, 2, 3] and sum(covered.values()) == FIRST + BAD
    bounds = {p: end // 2 for p, end in covered.items() if p != 3}  # partition 3 left out
    selected = read_rows(ingestion.shards, DIGITS, bounds)
    assert 0 < len(selected) < FIRST
    assert set(selected.partitions.tolist()) <= set(bounds)
    config = TrainConfig(
        model="lenet5",
        dataset="digits",
        data_source=ShardSource(root=ingestion.root, up_to_offset=bounds),
        epochs=1,
        repository=tmp_path / "repo",
        runs_dir=tmp_path / "runs",
        progress=False,
    )
    report = run_training(config)
    assert report.version == 1
    lineage = ModelRepository(tmp_path / "repo").get(report.name, 1).metadata.lineage
    assert lineage["data_source"] == "shards"
    assert json.loads(str(lineage["data_up_to_offset"])) == {str(p): b for p, b in bounds.items()}
    assert lineage["data_records"] == len(selected)
    train_share = 1 - config.test_fraction
    assert lineage["train_samples"] == pytest.approx(len(selected) * train_share * 0.9, abs=2)


def test_shards_of_a_recreated_topic_stop_the_worker_with_a_fix(
    ingested: Ingested, tmp_path: Path
) -> None:
    """A new broker forgets the topic: offsets start again at 0 under the old shards."""
    ingestion = ingested.copy(tmp_path)
    shards_before = list_shards(ingestion.shards)
    raw = load_raw("digits").data
    planned = plan_records(DIGITS, raw.images, raw.labels, 20, 0, "t3")
    with kafka_cluster() as bootstrap:
        create_topics(bootstrap, [*CATALOGUE, data_topic("digits")])
        publish_records(bootstrap, TOPIC, planned)
        fresh = Ingestion(bootstrap, ingestion.root, ingestion.log_dir)
        with ingest_worker(fresh, "recreated") as worker:
            code = worker.wait(timeout=60)
    assert code == 3  # stopped itself, offsets not committed
    log = (ingestion.log_dir / "recreated.log").read_text()
    assert "was recreated" in log and "--data-root" in log
    assert list_shards(ingestion.shards) == shards_before  # nothing written
    assert len(read_rows(ingestion.shards, DIGITS)) == FIRST
