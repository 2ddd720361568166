"""`headrace stream worker` on the embedded broker (or the Apache Kafka HEADRACE_KAFKA_BOOTSTRAP
names, see kafka_fixtures.py): requests in, exactly one outcome out.

One worker process (concurrency 2) serves the whole module; each test uses its
own request ids and reads `inference-results` and `inference-dlq` with a fresh
consumer group until every id it sent has an outcome. One test also serves the
worker's repository over gRPC and compares the two paths' answers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka_fixtures import external_bootstrap, kafka_cluster
from server_fixtures import (
    REPO_ROOT,
    export_lenet,
    inference_stub,
    lenet_config,
    output_array,
    publish,
    raw_request,
    reference,
    running_server,
    wait_until,
)
from stream_fixtures import (
    MODEL,
    PREPROCESSING,
    WorkerProcess,
    collect,
    json_request,
    leader_leaves_mid_rebalance,
    outcome_consumer,
    producer,
    publish_lenet,
    running_worker,
)

from headrace.processes import stop_process
from protos import grpc_service_pb2 as pb
from streams.messages import CONTENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE

SHAPE = [1, 1, 28, 28]
WARN_S = 2.0  # HEADRACE_UNASSIGNED_WARN_S for the stuck worker (the default's 20 s is a wait)


@dataclass
class Setup:
    bootstrap: str
    model_file: Path
    worker: WorkerProcess
    folder: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("stream")
    repository, model_file = publish_lenet(folder)
    with kafka_cluster() as bootstrap:
        group = f"worker-{uuid.uuid4().hex[:8]}"
        with running_worker(bootstrap, repository, group, folder / "w.log") as worker:
            yield Setup(bootstrap, model_file, worker, folder)


# -- helpers -------------------------------------------------------------------------------


def logits(result: dict[str, Any]) -> np.ndarray:
    output = result["outputs"][0]
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


@dataclass
class MixedRequests:
    """`n` LeNet-5 requests: odd ones carry uint8 pixels the worker preprocesses, even ones
    FP32 values; `model_inputs` is what the model gets for each."""

    ids: list[str]
    floats: np.ndarray
    pixels: np.ndarray

    @classmethod
    def make(cls, n: int, seed: int, tag: str) -> MixedRequests:
        rng = np.random.default_rng(seed)
        floats = rng.standard_normal((n, 1, 28, 28), dtype=np.float32)
        pixels = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
        ids = [f"{tag}-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
        return cls(ids, floats, pixels)

    @property
    def model_inputs(self) -> np.ndarray:
        odd = (np.arange(len(self.ids)) % 2 == 1)[:, None, None, None]
        return np.where(odd, PREPROCESSING.apply(self.pixels), self.floats)

    def produce(self, bootstrap: str) -> None:
        send = producer(bootstrap)
        for i, request_id in enumerate(self.ids):
            value = (
                json_request(request_id, self.pixels[i : i + 1], "UINT8")
                if i % 2
                else json_request(request_id, self.floats[i : i + 1])
            )
            send.send("inference-requests", key=request_id.encode(), value=value)
        send.flush()
        send.close()


# -- tests ---------------------------------------------------------------------------------


def test_thousand_requests_all_get_results_equal_to_onnxruntime(setup: Setup) -> None:
    n = 1000
    requests = MixedRequests.make(n, seed=7, tag="a")
    ids = requests.ids
    started = time.perf_counter()
    requests.produce(setup.bootstrap)
    produced_s = time.perf_counter() - started
    outcomes = collect(setup.bootstrap, set(ids))
    elapsed = time.perf_counter() - started
    print(
        f"\nstream worker: {n} requests end to end in {elapsed:.2f} s = {n / elapsed:.0f} req/s "
        f"(producing them took {produced_s:.2f} s)"
    )
    dlq = {k: v for k, (topic, v) in outcomes.items() if topic != "inference-results"}
    assert not dlq, f"{len(dlq)} requests went to the DLQ, e.g. {next(iter(dlq.values()))}"
    expected = reference(setup.model_file, requests.model_inputs)
    got = np.concatenate([logits(outcomes[request_id][1]) for request_id in ids])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()
    timings = outcomes[ids[0]][1]["timings"]
    assert timings["batch_size"] >= 1 and timings["infer_s"] > 0 and timings["queue_s"] >= 0
    metrics = setup.worker.scrape()
    assert metrics.value("stream_messages_in_total") >= n
    assert metrics.value("stream_results_total") >= n
    assert metrics.value("inference_request_success_total", model=MODEL) >= n
    assert metrics.value("stream_end_to_end_latency_seconds_count") >= n
    assert metrics.value("stream_end_to_end_latency_seconds_sum") > 0
    assert "# TYPE stream_consumer_lag gauge" in metrics.text
    batches_acked = metrics.value("stream_outcome_ack_seconds_count")
    assert 1 <= batches_acked <= n and metrics.value("stream_outcome_ack_seconds_sum") > 0
    print("batches whose ack waited for an earlier batch:", metrics.value("stream_ack_waits_total"))


def test_predictions_equal_the_grpc_servers_for_the_same_inputs(setup: Setup) -> None:
    """The same repository served over gRPC: every Kafka result equals the server's answer to
    the same model input (pixels sent to Kafka go to the server as the spec's FP32 values)."""
    n = 48
    requests = MixedRequests.make(n, seed=11, tag="g")
    ids, model_inputs = requests.ids, requests.model_inputs
    requests.produce(setup.bootstrap)
    outcomes = collect(setup.bootstrap, set(ids))
    assert {topic for topic, _ in outcomes.values()} == {"inference-results"}, outcomes
    with (
        running_server(setup.folder / "repo", log_dir=setup.folder) as server,
        inference_stub(server.address) as stub,
    ):
        answers = [stub.ModelInfer(raw_request(MODEL, model_inputs[i : i + 1])) for i in range(n)]
    over_grpc = np.concatenate([output_array(answer) for answer in answers])
    over_kafka = np.concatenate([logits(outcomes[request_id][1]) for request_id in ids])
    np.testing.assert_allclose(over_kafka, over_grpc, rtol=1e-5, atol=1e-6)
    assert (over_kafka.argmax(1) == over_grpc.argmax(1)).all()


def test_bad_records_each_get_one_dlq_record_and_good_ones_results(setup: Setup) -> None:
    tag = uuid.uuid4().hex[:6]
    image = np.random.default_rng(3).standard_normal((1, 1, 28, 28), dtype=np.float32)
    nan_image = image.copy()
    nan_image[0, 0, 0, 0] = math.nan
    missing_id_value = json.dumps(
        {"model": MODEL, "inputs": [{"name": "input", "datatype": "FP32", "shape": SHAPE,
                                     "data": image.ravel().tolist()}], "parameters": {"t": tag}}
    )  # fmt: skip
    unknown_model = {**json.loads(json_request(f"unknown-{tag}", image)), "model": "no-such"}
    bad: dict[str, tuple[bytes | None, str, str]] = {  # request id: value, reason, stage
        f"notjson-{tag}": (b"{not json", "not_json", "decode"),
        f"schema-{tag}": (
            json.dumps({"request_id": f"schema-{tag}", "model": MODEL, "inputs": "no"}).encode(),
            "invalid_schema",
            "decode",
        ),
        f"unknown-{tag}": (json.dumps(unknown_model).encode(), "model_not_found", "validate"),
        f"shape-{tag}": (
            json_request(f"shape-{tag}", image.reshape(1, 1, 14, 56)),
            "invalid_input",
            "validate",
        ),
        f"dtype-{tag}": (
            json_request(f"dtype-{tag}", image.astype(np.float64), "FP64"),
            "invalid_input",
            "validate",
        ),
        f"nan-{tag}": (json_request(f"nan-{tag}", nan_image), "invalid_input", "validate"),
        f"big-{tag}": (
            b'{"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}',
            "payload_too_large",
            "decode",
        ),
        f"tomb-{tag}": (None, "tombstone", "decode"),
        f"late-{tag}": (
            json_request(f"late-{tag}", image, deadline=time.time() - 1),
            "deadline_exceeded",
            "validate",
        ),
    }
    good = [f"good-{tag}-{i}" for i in range(20)]
    send = producer(setup.bootstrap, max_request_size=8 * 1024 * 1024)
    for i, request_id in enumerate(good):
        send.send(
            "inference-requests", key=request_id.encode(), value=json_request(request_id, image)
        )
        if i < len(bad):
            bad_id = list(bad)[i]
            send.send("inference-requests", key=bad_id.encode(), value=bad[bad_id][0])
    send.send("inference-requests", value=missing_id_value.encode())  # no key, no request_id
    send.flush()
    send.close()
    outcomes = collect(setup.bootstrap, set(good) | set(bad), by_payload={missing_id_value})
    for request_id in good:
        topic, value = outcomes[request_id]
        assert topic == "inference-results", value
    for request_id, (_, reason, stage) in bad.items():
        topic, value = outcomes[request_id]
        assert topic == "inference-dlq", value
        assert (value["error_code"], value["stage"]) == (reason, stage), value
        assert value["source"]["topic"] == "inference-requests"
        assert value["message"]
    topic, value = outcomes[missing_id_value]
    assert topic == "inference-dlq" and value["error_code"] == "missing_request_id", value
    assert value["request_id"] is None
    assert outcomes[f"big-{tag}"][1]["payload"] is None  # referenced by position, not copied
    metrics = setup.worker.scrape()
    assert metrics.value("stream_dlq_total", reason="tombstone") >= 1
    assert metrics.value("stream_dlq_total", reason="not_json") >= 1


def test_binary_protobuf_request_gets_a_result(setup: Setup) -> None:
    request_id = f"proto-{uuid.uuid4().hex[:6]}"
    image = np.random.default_rng(5).standard_normal((2, 1, 28, 28), dtype=np.float32)
    message = pb.ModelInferRequest(model_name=MODEL)
    message.inputs.add(name="input", datatype="FP32", shape=list(image.shape))
    message.raw_input_contents.append(image.tobytes())
    send = producer(setup.bootstrap)
    headers = [(CONTENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE.encode())]
    send.send(
        "inference-requests",
        key=request_id.encode(),
        value=message.SerializeToString(),
        headers=headers,
    )
    send.flush()
    send.close()
    topic, value = collect(setup.bootstrap, {request_id}, timeout_s=60)[request_id]
    assert topic == "inference-results", value
    np.testing.assert_allclose(
        logits(value), reference(setup.model_file, image), rtol=1e-4, atol=1e-5
    )


def test_requests_pinned_to_a_version_reach_the_versions_of_its_policy(setup: Setup) -> None:
    """`--version-policy all`, as on `headrace serve`: a request's `version` picks any
    published version, and a result names the version that answered. The worker served only
    the latest version, so a pinned request for an older one always went to the DLQ.

    The model has a name of its own: the module's worker, which reads the same topic in
    another group, sends these requests to the DLQ, and only results are read here."""
    folder = setup.folder / "pinned"
    name = "lenet-versions"
    config = lenet_config(name, max_batch_size=64)
    files = [export_lenet(folder / f"{seed}.onnx", seed=seed) for seed in (0, 1)]
    for model_file in files:
        publish(folder / "repo", config, model_file)
    image = np.random.default_rng(3).standard_normal((1, 1, 28, 28), dtype=np.float32)
    answering = {"1": files[0], "2": files[1], "": files[1]}  # no version: the latest
    ids = {f"pin{v or 'none'}-{uuid.uuid4().hex[:6]}": v for v in answering}
    group = f"pinned-{uuid.uuid4().hex[:8]}"
    _start_group_at_the_end(setup.bootstrap, group)
    args = ["--version-policy", "all"]
    repository, log = folder / "repo", folder / "w.log"
    with running_worker(setup.bootstrap, repository, group, log, args=args) as worker:
        assert worker.fields["models"] == f"{name}:1,{name}:2"  # the ready line names both
        send = producer(setup.bootstrap)
        for request_id, version in ids.items():
            extra = {"model": name, **({"version": version} if version else {})}
            send.send("inference-requests", key=request_id.encode(),
                      value=json_request(request_id, image, **extra))  # fmt: skip
        send.flush()
        send.close()
        results = _results_of(setup.bootstrap, set(ids))
    for request_id, version in ids.items():
        result = results[request_id]
        assert result["model_version"] == (version or "2"), result
        expected = reference(answering[version], image)
        np.testing.assert_allclose(logits(result), expected, rtol=1e-4, atol=1e-5)


def _start_group_at_the_end(bootstrap: str, group: str) -> None:
    """Commit `group`'s offsets at the end of `inference-requests`, so that its worker reads
    only what the test sends next, not every request of the module's earlier tests."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic("inference-requests") or set()
        ends = consumer.end_offsets([TopicPartition("inference-requests", p) for p in partitions])
        consumer.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in ends.items()})
    finally:
        consumer.close()


def _results_of(bootstrap: str, wanted: set[str], timeout_s: float = 60.0) -> dict[str, Any]:
    """The result record of each of `wanted` (DLQ records are skipped)."""
    consumer = outcome_consumer(bootstrap)
    found: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while set(found) != wanted:
            assert time.monotonic() < deadline, f"no results for {sorted(wanted - set(found))}"
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    value = json.loads(record.value)
                    if record.topic == "inference-results" and value["request_id"] in wanted:
                        found[value["request_id"]] = value
    finally:
        consumer.close()
    return found


@pytest.mark.skipif(external_bootstrap() is not None, reason="the embedded broker's fault")
def test_a_worker_of_a_stuck_group_says_so(setup: Setup) -> None:
    """On the embedded broker a group whose leader left between JoinGroup and SyncGroup never
    finishes a rebalance again. A worker of that group waited without a word (no ready line,
    nothing on stderr at the default log level); it warns while it has no assignment."""
    group = f"stuck-{uuid.uuid4().hex[:8]}"
    leader_leaves_mid_rebalance(setup.bootstrap, group)
    log_file = setup.folder / "stuck.log"
    repository = str(setup.folder / "repo")
    command = [sys.executable, "-m", "headrace", "stream", "worker", "--bootstrap",
               setup.bootstrap, "--repository", repository, "--group", group]  # fmt: skip
    env = dict(os.environ, HEADRACE_UNASSIGNED_WARN_S=str(WARN_S))  # not the 20 s default
    with log_file.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log, text=True
        )
    try:
        wait_until(
            lambda: "no partitions assigned after" in log_file.read_text(errors="replace"),
            "the worker's warning",
            timeout_s=WARN_S + 30,
        )
        text = log_file.read_text(errors="replace")
        assert f"consumer group {group!r} has not finished a rebalance" in text, text
        assert "stream worker ready" not in text
    finally:
        assert stop_process(process, 40) == 0, log_file.read_text(errors="replace")[-3000:]


def test_sigkill_mid_stream_loses_no_request(setup: Setup) -> None:
    """At-least-once: a worker killed mid-stream leaves no request without an outcome once a
    second worker of the same group takes over from the committed offsets."""
    n = 3000
    ids = [f"k-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
    image = np.random.default_rng(9).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
    group = f"killed-{uuid.uuid4().hex[:8]}"
    send = producer(setup.bootstrap)
    with running_worker(
        setup.bootstrap, setup.folder / "repo", group, setup.folder / "killed.log"
    ) as first:
        for request_id in ids:
            send.send("inference-requests", key=request_id.encode(), value=json_request(
                request_id, image, "UINT8"))  # fmt: skip
        send.flush()
        wait_until(
            lambda: first.scrape().value("stream_results_total") >= n // 4,
            "a quarter of the results",
            timeout_s=60,
        )
        first.process.kill()  # SIGKILL: no chance to commit or finish anything
        first.process.wait(timeout=10)
    send.close()
    with running_worker(setup.bootstrap, setup.folder / "repo", group, setup.folder / "second.log"):
        duplicates: list[str] = []
        outcomes = collect(setup.bootstrap, set(ids), duplicates=duplicates)
    assert all(topic == "inference-results" for topic, _ in outcomes.values())
    print(f"\nafter SIGKILL: {len(duplicates)} duplicate results of {n} requests")


def test_sigterm_stops_the_worker_cleanly(setup: Setup) -> None:
    assert setup.worker.stop() == 0, setup.worker.log_tail()
    assert "Traceback" not in setup.worker.log_file.read_text(errors="replace")
