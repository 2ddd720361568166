"""Training jobs over Kafka on Ray: submit -> train -> publish -> a running server swaps models.

One embedded broker, one `headrace train agent` (local Ray, 2 CPUs) and one
`headrace serve` are shared by the module's tests; every process is stopped by
pid at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from server_fixtures import (
    REPO_ROOT,
    ServerProcess,
    inference_stub,
    raw_request,
    running_server,
    wait_for_ready_line,
)
from stream_fixtures import WorkerProcess, running_worker

from headrace.processes import stop_process
from serving.repository import ModelRepository
from streams.broker import EmbeddedBroker
from streams.job_client import read_events
from streams.job_messages import (
    TERMINAL_EVENTS,
    UPDATES_TOPIC,
    JobCommand,
    ModelUpdate,
    TrainingEvent,
)
from streams.results import consume
from streams.topics import create_topics
from training.config import TrainConfig
from training.recipe import run_training

MODEL = "digits-live"
AGENT_READY = "training agent ready"
TRAFFIC_PAUSE_S = 0.005


@dataclass
class Stack:
    bootstrap: str
    repository: Path
    runs_dir: Path
    folder: Path
    agent: subprocess.Popen[str]
    server: ServerProcess
    agent_log: Path
    worker: WorkerProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("jobs")
    repository, runs_dir = folder / "repo", folder / "runs"
    run_training(
        TrainConfig(epochs=1, name=MODEL, repository=repository, runs_dir=runs_dir, progress=False)
    )
    with contextlib.ExitStack() as exits:
        broker = exits.enter_context(EmbeddedBroker())
        create_topics(broker.bootstrap)
        agent, agent_log = _start_agent(broker.bootstrap, repository, runs_dir, folder)
        exits.callback(stop_process, agent, 60.0)
        server = exits.enter_context(
            running_server(repository, "--poll-interval-s", "0.3", log_dir=folder)
        )
        worker = exits.enter_context(  # no polling: only the model-updates announcement reloads
            running_worker(
                broker.bootstrap, repository, f"jobs-{os.getpid()}", folder / "worker.log",
                concurrency=1, args=["--poll-interval-s", "0"],
            )
        )  # fmt: skip
        yield Stack(
            broker.bootstrap, repository, runs_dir, folder, agent, server, agent_log, worker
        )


def _start_agent(
    bootstrap: str, repository: Path, runs_dir: Path, folder: Path
) -> tuple[subprocess.Popen[str], Path]:
    log_file = folder / "agent.log"
    command = [sys.executable, "-m", "headrace", "train", "agent", "--bootstrap", bootstrap,
               "--repository", str(repository), "--runs-dir", str(runs_dir), "--ray-cpus", "2",
               "--group", f"agent-{os.getpid()}"]  # fmt: skip
    with log_file.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True
        )
    try:
        wait_for_ready_line(process, AGENT_READY, log_file, "the agent", 120.0)
    except AssertionError:
        stop_process(process, 30.0)
        raise
    return process, log_file


def _cli(*args: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace", "train", *args, "--bootstrap", bootstrap],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _submit(stack: Stack, spec: str, name: str) -> str:
    path = stack.folder / f"{name}.yaml"
    path.write_text(spec)
    done = _cli("submit", str(path), bootstrap=stack.bootstrap)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _events_until(
    stack: Stack, job_id: str, wanted: set[str], timeout_s: float = 240.0
) -> list[TrainingEvent]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        history = list(read_events(stack.bootstrap, job_id, idle_s=0.5))
        if history and history[-1].event in wanted | TERMINAL_EVENTS:
            return history
        time.sleep(0.5)
    raise AssertionError(
        f"job {job_id} did not reach {wanted} in {timeout_s:g} s:\n"
        + stack.agent_log.read_text()[-3000:]
    )


@dataclass
class Traffic:
    """Requests to the server on a thread, each followed by a `TRAFFIC_PAUSE_S` pause (at
    full speed they held a core for the whole test and slowed the training it waits for);
    records versions and failures."""

    address: str
    versions: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        batch = np.random.default_rng(0).standard_normal((1, 1, 28, 28), dtype=np.float32)
        with inference_stub(self.address) as stub:
            while not self.stop.is_set():
                try:
                    response = stub.ModelInfer(raw_request(MODEL, batch), timeout=10)
                except grpc.RpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
                    continue
                version = response.model_version
                self.versions[version] = self.versions.get(version, 0) + 1
                self.stop.wait(TRAFFIC_PAUSE_S)


def test_submitted_job_becomes_the_served_version_with_no_failed_request(stack: Stack) -> None:
    traffic = Traffic(stack.server.address)
    thread = threading.Thread(target=traffic.run, daemon=True)
    thread.start()
    try:
        job_id = _submit(
            stack, f"model: lenet5\ndataset: digits\nname: {MODEL}\nepochs: 3\n", "swap"
        )
        history = _events_until(stack, job_id, {"succeeded"})
        outcome = history[-1]
        assert outcome.event == "succeeded", outcome.describe()
        assert [e.event for e in history[:2]] == ["accepted", "started"]
        assert [e.epoch for e in history if e.event == "epoch"] == [1, 2, 3]
        assert outcome.version == 2
        deadline = time.monotonic() + 30
        while traffic.versions.get("2", 0) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        traffic.stop.set()
        thread.join(timeout=30)
    assert traffic.failures == []
    assert traffic.versions.get("1", 0) > 0 and traffic.versions.get("2", 0) >= 20, traffic.versions
    metadata = ModelRepository(stack.repository).get(MODEL, 2).metadata
    assert metadata.lineage["job_id"] == job_id
    updates = [
        ModelUpdate.model_validate_json(value or b"")
        for _, value in consume(stack.bootstrap, [UPDATES_TOPIC], follow=False, idle_s=1.0)
    ]
    assert any(u.model == MODEL and u.version == 2 and u.job_id == job_id for u in updates)
    assert _stream_result_version(stack) == "2"


def _stream_result_version(stack: Stack) -> str:
    """Send Kafka requests until one is answered by version 2 (or 30 s pass); its version."""
    from kafka import KafkaConsumer, KafkaProducer

    image = np.random.default_rng(1).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
    send = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    read = KafkaConsumer(
        "inference-results", bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest"
    )
    versions: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 30
        for n in range(300):
            body = {
                "request_id": f"swap-{n}",
                "model": MODEL,
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "UINT8",
                        "shape": [1, 1, 28, 28],
                        "data": image.ravel().tolist(),
                    }
                ],
            }
            send.send("inference-requests", key=f"swap-{n}".encode(),
                      value=json.dumps(body).encode()).get(timeout=30)  # fmt: skip
            for records in read.poll(timeout_ms=1000).values():
                for record in records:
                    result = json.loads(record.value)
                    versions[result["request_id"]] = result["model_version"]
            if "2" in versions.values() or time.monotonic() > deadline:
                break
    finally:
        send.close()
        read.close()
    assert versions, "the stream worker answered nothing:\n" + stack.worker.log_tail()
    return max(versions.values(), key=int)


def test_events_of_a_job_that_sends_them_often_are_read_without_waiting_for_its_end(
    stack: Stack,
) -> None:
    # read_events (train cancel, train status) read until the topic had been quiet for idle_s:
    # a LeNet-5 job on digits sends an epoch event every ~0.2 s, so `train cancel` waited for
    # the job to end and then said it had already ended.
    from kafka import KafkaProducer

    first_ten, stop = threading.Event(), threading.Event()
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=0)

    def send_epochs() -> None:  # ten at once, then one every 0.1 s for at most 29 s
        for epoch in range(1, 301):
            event = TrainingEvent(job_id="job-busy", event="epoch", epoch=epoch)
            producer.send("training-events", key=b"job-busy",
                          value=event.model_dump_json().encode()).get(timeout=30)  # fmt: skip
            if epoch == 10:
                first_ten.set()
            if epoch >= 10 and stop.wait(0.1):
                return

    thread = threading.Thread(target=send_epochs, daemon=True)
    thread.start()
    try:
        assert first_ten.wait(timeout=60), "the first ten epoch events were not sent"
        read = [e.epoch for e in read_events(stack.bootstrap, "job-busy", idle_s=0.5)]
        ran_out = not thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=60)
        producer.close()
    assert not ran_out, "the reading ended only once all 300 events had been sent"
    assert read[:10] == list(range(1, 11)) and read == list(range(1, len(read) + 1)), read


def test_bad_specs_are_refused_with_every_error_listed(stack: Stack) -> None:
    path = stack.folder / "bad.yaml"
    path.write_text(
        "model: resnet99\nlearning_rate: -0.1\ndistributed: {workers: 64, strategy: gossip}\n"
    )
    done = _cli("submit", str(path), "--cpus", "2", bootstrap=stack.bootstrap)
    assert done.returncode == 2
    for expected in ("resnet99", "learning_rate", "64 workers", "gossip"):
        assert expected in done.stderr, done.stderr
    path.write_text("model: [lenet5\n")
    done = _cli("submit", str(path), bootstrap=stack.bootstrap)
    assert done.returncode == 2 and "not valid JSON or YAML at line 2" in done.stderr, done.stderr
    # A bad spec that skips the CLI's checks is refused by the agent before anything runs.
    from kafka import KafkaProducer

    command = JobCommand(
        command="submit", job_id="job-bad-direct", spec={"model": "nope", "epochs": -1}
    )
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    producer.send("training-jobs", key=b"job-bad-direct", value=command.model_dump_json().encode())
    producer.flush()
    producer.close()
    history = _events_until(stack, "job-bad-direct", {"rejected"}, timeout_s=60)
    assert [e.event for e in history] == ["rejected"]
    assert "model" in (history[0].reason or "") and "epochs" in (history[0].reason or "")


def test_cancel_stops_a_running_job(stack: Stack) -> None:
    job_id = _submit(stack, "model: lenet5\nepochs: 500\npatience: 0\nname: cancel-me\n", "long")
    _events_until(stack, job_id, {"epoch"})
    done = _cli("cancel", job_id, bootstrap=stack.bootstrap)
    assert done.returncode == 0, done.stderr
    history = _events_until(stack, job_id, set(), timeout_s=60)
    assert history[-1].event == "cancelled"
    assert "cancel-me" not in ModelRepository(stack.repository).list_models()
    again = _cli("cancel", job_id, bootstrap=stack.bootstrap)
    assert again.returncode == 0 and "already ended (cancelled)" in again.stdout, again
    unknown = _cli("cancel", "job-never-submitted", bootstrap=stack.bootstrap)
    assert unknown.returncode == 2, unknown
    assert "no job 'job-never-submitted' was submitted" in unknown.stderr, unknown.stderr


def _train_task_processes(agent_pid: int) -> list[psutil.Process]:
    """The agent's Ray worker running the training task (only this agent's descendants)."""
    found = []
    for process in psutil.Process(agent_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any("_train_task" in part for part in process.cmdline()):
                found.append(process)
    return found


def test_crashed_worker_is_retried_from_its_checkpoint(stack: Stack) -> None:
    # ResNet-20 epochs take seconds (~9 s on digits), so the kill lands in epoch 2 even on an
    # idle machine; the retry must then start at epoch 2, not 1.
    spec = "model: resnet20\nepochs: 2\npatience: 0\nname: crashy\n"
    job_id = _submit(stack, spec, "crash")
    _events_until(stack, job_id, {"epoch"})
    victims = _train_task_processes(stack.agent.pid)
    assert victims, "no Ray training task process found"
    for process in victims:
        os.kill(process.pid, signal.SIGKILL)
    history = _events_until(stack, job_id, set())
    kinds = [e.event for e in history]
    assert "retrying" in kinds and history[-1].event == "succeeded", kinds
    second = [e.epoch or 0 for e in history if e.event == "epoch" and e.attempt == 2]
    assert second and second[0] > 1 and second[-1] == 2, second  # resumed, not restarted
