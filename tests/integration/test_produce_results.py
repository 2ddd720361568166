"""`headrace produce` writes decodable requests; `headrace results` summarises what comes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka_fixtures import kafka_cluster

from streams.codec import decode_request
from streams.messages import DLQRecord, InferenceResultMessage, TensorJSON


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    with kafka_cluster() as bootstrap:
        yield bootstrap


def _cli(*args: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HEADRACE_KAFKA_BOOTSTRAP=bootstrap)
    return subprocess.run(
        [sys.executable, "-m", "headrace", *args], capture_output=True, text=True, env=env,
        timeout=180,
    )  # fmt: skip


def _read(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0) -> list[Any]:
    """The topic's records once `count` are read (or `timeout_s` passed), and any more that one
    further poll finds: everything was acknowledged before the reading began. (Reading until
    5 s without a record took 5 s more per test.)"""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    finally:
        consumer.close()
    return records


@pytest.mark.parametrize("payload_format", ["json", "binary"])
def test_produce_sends_decodable_requests_with_a_manifest(
    bootstrap: str, tmp_path: Path, payload_format: str
) -> None:
    topic = f"requests-{payload_format}"
    manifest = tmp_path / "manifest.jsonl"
    done = _cli(
        "produce", "--model", "lenet5-digits", "--n", "50", "--topic", topic,
        "--format", payload_format, "--manifest", str(manifest), bootstrap=bootstrap,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "produced 50 requests" in done.stdout
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len({r["request_id"] for r in rows}) == 50
    records = _read(bootstrap, topic, 50)
    assert len(records) == 50
    decoded = [decode_request(r.key, r.value, r.headers) for r in records]
    assert {d.request.id for d in decoded} == {r["request_id"] for r in rows}
    tensor = decoded[0].request.inputs[0]
    assert (tensor.datatype, tensor.shape) == ("UINT8", (1, 1, 28, 28))


def test_results_summarises_results_dlq_duplicates_and_accuracy(
    bootstrap: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "labels.jsonl"
    manifest.write_text(
        "\n".join(json.dumps({"request_id": f"r{i}", "label": i % 2}) for i in range(4)) + "\n"
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")

    def result(request_id: str, predicted: int) -> bytes:
        scores = [1.0, 0.0] if predicted == 0 else [0.0, 1.0]
        outputs = [TensorJSON(name="logits", datatype="FP32", shape=[1, 2], data=scores)]
        message = InferenceResultMessage(
            request_id=request_id, model="m", model_version="1", outputs=outputs,
            request_created_at=1.0, produced_at=1.25,
        )  # fmt: skip
        return message.model_dump_json().encode()

    for request_id, predicted in [("r0", 0), ("old", 1), ("r1", 1), ("r2", 1), ("r2", 1)]:
        producer.send("res", key=request_id.encode(), value=result(request_id, predicted))
    for request_id in ("r3", "older"):  # "old" and "older" are not in the manifest
        dlq = DLQRecord(
            request_id=request_id, error_code="invalid_input", message="bad", stage="validate"
        )
        producer.send("dlq", key=request_id.encode(), value=dlq.model_dump_json().encode())
    producer.flush()
    producer.close()

    done = _cli(
        "results", "--topic", "res", "--dlq-topic", "dlq", "--idle-s", "3",
        "--manifest", str(manifest), "--json", bootstrap=bootstrap,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["results"] == 4 and summary["dlq"] == {"invalid_input": 1}
    assert summary["distinct_request_ids"] == 4 and summary["duplicates"] == 1
    assert summary["accuracy"] == pytest.approx(2 / 3)  # r2 (labelled 0) is wrong; counted once
    assert summary["latency_p50_ms"] == pytest.approx(250.0)
    assert summary["other_requests"] == 2

    # --expect counts the manifest's requests only: the 4 are there, whatever else is
    done = _cli(
        "results", "--topic", "res", "--dlq-topic", "dlq", "--idle-s", "60", "--expect", "4",
        "--manifest", str(manifest), "--quiet", bootstrap=bootstrap,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "accuracy 0.6667 on 3 labelled results" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["produce", "--model", "m", "--topic", "."], "'.' is not a Kafka topic name"),
        (["produce", "--model", "m", "--rate", "0"], "--rate': must be above 0"),
        # '' ended in a pydantic traceback after loading the data; '../x' was sent 1000 times
        (["produce", "--model", ""], "--model': invalid model name ''"),
        (["produce", "--model", "../x"], "--model': invalid model name '../x'"),
        (["results", "--expect", "0"], "--expect"),
        (["results", "--idle-s", "-1"], "--idle-s': must be above 0"),
        (["results", "--dlq-topic", "a b"], "'a b' is not a Kafka topic name"),
    ],
)
def test_bad_flags_are_refused_before_anything_is_sent(
    bootstrap: str, args: list[str], message: str
) -> None:
    done = _cli(*args, bootstrap=bootstrap)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_kafka_and_bad_manifests_are_clear_errors(
    bootstrap: str, tmp_path: Path
) -> None:
    nobody = "127.0.0.1:1"
    for args in (["produce", "--model", "m", "--n", "2"], ["results"]):
        done = _cli(*args, bootstrap=nobody)
        assert done.returncode == 2 and f"cannot reach Kafka at {nobody}" in done.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request_id": "a", "label": 1}\n{"request_id": "b"}\n')
    done = _cli("results", "--manifest", str(bad), bootstrap=nobody)
    assert done.returncode == 2, done.stderr
    assert f"{bad}, line 2: not a manifest line (no 'label')" in done.stderr
    unwritable = tmp_path / "file" / "manifest.jsonl"
    (tmp_path / "file").write_text("a file, not a folder")
    done = _cli(
        "produce", "--model", "m", "--topic", "unwritten", "--manifest", str(unwritable),
        bootstrap=bootstrap,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cannot write the manifest {unwritable}" in done.stderr
