"""The Kafka-side processes while the broker is away for a while and then back: the embedded
broker is frozen with SIGSTOP (its memory storage survives, unlike a restart) and resumed with
SIGCONT. Each test is one compact scenario per process kind; every process and every frozen
broker is released (SIGCONT) and stopped by its pid, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_fixtures import external_bootstrap
from server_fixtures import REPO_ROOT, wait_until

from streams.broker import EmbeddedBroker, answers_metadata
from streams.job_agent import JobAgent, JobAgentConfig
from streams.job_client import read_events, submit_job
from streams.job_messages import TERMINAL_EVENTS, TrainingEvent
from streams.topics import create_topics
from training.job_spec import parse_job_spec
from training.loop import EpochRecord
from training.recipe import TrainReport

pytestmark = pytest.mark.skipif(
    external_bootstrap() is not None, reason="freezes the embedded broker's process"
)


@contextlib.contextmanager
def frozen(broker: EmbeddedBroker) -> Iterator[None]:
    """The broker stopped (SIGSTOP) within the block: connections stay open, nothing answers.
    Resumed (SIGCONT) on the way out, also when the block fails."""
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)


# -- the training agent ----------------------------------------------------------------------

AGENT_OUTAGE_S = 35.0  # longer than the 30 s the agent's events used to wait for the broker


def _epoch(epoch: int) -> EpochRecord:
    return EpochRecord(
        epoch=epoch, train_loss=1.0, train_accuracy=0.5, val_loss=1.0, val_accuracy=0.5,
        seconds=0.1, samples_per_s=100.0,
    )  # fmt: skip


def _report(run_dir: Path) -> TrainReport:
    return TrainReport(
        model="lenet5", name="outage", dataset="digits", version=None, test_accuracy=0.5,
        test_balanced_accuracy=0.5, test_loss=1.0, val_loss=1.0, epochs_run=2, best_epoch=2,
        stopped_early=False, train_seconds=0.2, onnx_max_abs_diff=None, run_dir=str(run_dir),
        repository=None,
    )  # fmt: skip


def _events(bootstrap: str, job_id: str) -> list[TrainingEvent]:
    return list(read_events(bootstrap, job_id, idle_s=0.3))


def _ended(bootstrap: str, job_id: str) -> list[TrainingEvent] | None:
    """The job's events once one of them ends it."""
    history = _events(bootstrap, job_id)
    return history if any(e.event in TERMINAL_EVENTS for e in history) else None


@contextlib.contextmanager
def _agent_past_first_epoch(
    bootstrap: str, tmp_path: Path, job_id: str, train: Callable[..., TrainReport]
) -> Iterator[threading.Thread]:
    """A job agent running `train` for one two-epoch job, yielded (its loop's thread) once
    the job's first epoch event is on the topic; stopped on leaving, and checked stopped."""
    config = JobAgentConfig(
        bootstrap=bootstrap, repository=tmp_path / "repo", runs_dir=tmp_path / "runs",
        group_id=f"agent-{job_id}",
    )  # fmt: skip
    agent = JobAgent(config, train, available_cpus=1)
    stop = threading.Event()
    loop = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    loop.start()
    try:
        submit_job(bootstrap, parse_job_spec({"model": "lenet5", "epochs": 2, "job_id": job_id}))
        wait_until(
            lambda: any(e.event == "epoch" for e in _events(bootstrap, job_id)),
            "the job's first epoch event",
            timeout_s=60,
        )
        yield loop
    finally:
        stop.set()
        loop.join(timeout=90)
    assert not loop.is_alive(), "the agent did not stop"


def test_a_training_job_goes_on_through_a_broker_outage(tmp_path: Path) -> None:
    """Before: each event waited 30 s for the broker, so a job whose broker was away for
    35 s failed ('failed: KafkaTimeoutError: Timeout after waiting for 30 secs.') and its
    command was committed as done. Now the job's next event waits for the broker (the
    producer's delivery timeout) and the job succeeds once the broker is back."""
    in_outage = threading.Event()  # the broker is frozen: the job may report its next epoch
    job_id = f"outage-{uuid.uuid4().hex[:8]}"

    def train(config: Any, on_epoch: Callable[[EpochRecord], None], _stop: Any) -> TrainReport:
        on_epoch(_epoch(1))
        assert in_outage.wait(60), "the test never froze the broker"
        on_epoch(_epoch(2))  # produced while the broker is away
        return _report(config.runs_dir)

    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap)
        with _agent_past_first_epoch(broker.bootstrap, tmp_path, job_id, train) as loop:
            with frozen(broker):
                in_outage.set()
                loop.join(timeout=AGENT_OUTAGE_S)  # the outage; the agent must not end in it
                assert loop.is_alive(), "the agent's loop ended during the outage"
            history = wait_until(
                lambda: _ended(broker.bootstrap, job_id), "the job's end after it", timeout_s=60
            )
    kinds = [(e.event, e.epoch) for e in history if e.event not in ("accepted", "started")]
    assert kinds == [("epoch", 1), ("epoch", 2), ("succeeded", None)], history


def test_a_training_job_ends_with_an_event_after_its_broker_restarted(tmp_path: Path) -> None:
    """Before: the embedded broker SIGKILLed and started again on its port (memory storage:
    it forgets the agent's producer id) made the agent's idempotent producer fail the job's
    next event with UnknownProducerIdError and every later one ('InitProducerId ...
    UnknownError'): the job thread died with a traceback, no `failed` event could be sent,
    and the command was committed with no final event. Now the job succeeds."""
    restarted = threading.Event()  # the broker is back: the job may report its next epoch
    job_id = f"restart-{uuid.uuid4().hex[:8]}"

    def train(config: Any, on_epoch: Callable[[EpochRecord], None], _stop: Any) -> TrainReport:
        on_epoch(_epoch(1))
        assert restarted.wait(60), "the test never restarted the broker"
        on_epoch(_epoch(2))  # the first record the restarted broker sees from this producer
        return _report(config.runs_dir)

    broker = EmbeddedBroker().start()
    try:
        create_topics(broker.bootstrap)
        with _agent_past_first_epoch(broker.bootstrap, tmp_path, job_id, train):
            assert broker.process is not None
            broker.process.kill()  # by its pid; the port stays ours to restart on
            broker.process.wait(timeout=10)
            broker = EmbeddedBroker(port=broker.port).start()
            # the restarted broker has no topics, and acknowledges records sent to a missing
            # one without keeping them; `train status` creates them too before it reads
            create_topics(broker.bootstrap)
            restarted.set()
            history = wait_until(
                lambda: _ended(broker.bootstrap, job_id), "the job's end", timeout_s=60
            )
    finally:
        broker.stop()
    # the events before the restart went with the broker's memory
    assert [(e.event, e.epoch) for e in history] == [("epoch", 2), ("succeeded", None)], history


# -- startup against a broker that does not answer -------------------------------------------


def test_a_broker_that_accepts_connections_but_never_answers_is_given_up_on_in_time(
    tmp_path: Path,
) -> None:
    """A frozen broker accepts TCP connections (the kernel does) but answers nothing. Before:
    `answers_metadata(timeout_s=2)` returned only after kafka-python's own 30 s bootstrap
    timeout, so `headrace stream worker`, `data ingest`, `results` ... took 31 s to say
    'cannot reach Kafka' instead of the 5 s they give it, after five lines of kafka-python's
    log (the worker's)."""
    with EmbeddedBroker() as broker, frozen(broker):
        started = time.monotonic()
        assert not answers_metadata(broker.bootstrap, timeout_s=2.0)
        waited_s = time.monotonic() - started
        command = [sys.executable, "-m", "headrace", "stream", "worker", "--bootstrap",
                   broker.bootstrap, "--repository", str(tmp_path)]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        refused_s = time.monotonic() - started
    assert waited_s < 10.0, f"answers_metadata(timeout_s=2) took {waited_s:.1f} s"
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"error: cannot reach Kafka at {broker.bootstrap}; start the embedded broker with "
        "`headrace broker start` or set HEADRACE_KAFKA_BOOTSTRAP"
    ], done.stderr  # one line, without kafka-python's log of the failed probe
    assert refused_s < 20.0, f"the worker took {refused_s:.1f} s to refuse the start"


# -- an idle stream worker whose broker is killed, then restarted ----------------------------

SILENCE_S = 2.0  # HEADRACE_BROKER_SILENCE_S for the worker: a short outage is enough
KILLED_S = 4.0  # the broker is down this long after the worker has said so


def _outage(
    broker: EmbeddedBroker, reachable: Callable[[], float], log_file: Path, series: str
) -> tuple[EmbeddedBroker, str]:
    """Kill `broker` once `reachable()` (`series`_reachable) is 1, wait until it reads 0,
    keep the broker down KILLED_S more, then restart it on its port and wait until it reads 1
    again. Returns the restarted broker and what `log_file` gained in those KILLED_S."""
    assert reachable() == 1.0
    assert broker.process is not None
    broker.process.kill()  # by its pid; the port stays ours to restart on
    broker.process.wait(timeout=10)
    wait_until(lambda: reachable() == 0.0 or None, f"{series}_reachable 0", timeout_s=30)
    lost = log_file.read_text()
    killed_at = time.monotonic()
    wait_until(lambda: time.monotonic() - killed_at >= KILLED_S or None, "the outage")
    during = log_file.read_text()[len(lost) :]
    restarted = EmbeddedBroker(port=broker.port).start()
    try:
        wait_until(lambda: reachable() == 1.0 or None, f"{series}_reachable 1 again", timeout_s=60)
    except BaseException:
        restarted.stop()  # the caller's `finally` holds only the killed broker
        raise
    return restarted, during


def _kinds(lines: list[str]) -> list[str]:
    """Each log line without its time stamp, numbers and addresses masked: lines of one kind
    read the same (as `streams.log_flood` tells kinds apart)."""
    return [re.sub(r"0x[0-9a-f]+|\d+", "#", line.split(" ", 2)[2]) for line in lines]


def _client_lines(log: str) -> list[str]:
    """The worker's WARNING and ERROR lines that are not the broker watch's own."""
    return [
        line
        for line in log.splitlines()
        if ("[ERROR]" in line or "[WARNING]" in line) and "Kafka at " not in line
    ]


def test_an_idle_worker_says_once_that_it_lost_its_broker_and_once_that_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a worker whose broker was killed logged about 6,850 aiokafka lines a minute
    (about 114 a second: 'Unable connect to node', 'Unable to update metadata', 'Failed fetch
    messages', 'Group Coordinator Request failed') and not one that said Kafka was away, nor
    one when it was back; a frozen broker, not a line at all. Now: one warning after
    HEADRACE_BROKER_SILENCE_S without an answer, the client's lines once per kind a minute,
    one line once Kafka answers again, and /metrics says so."""
    from stream_fixtures import running_worker

    monkeypatch.setenv("HEADRACE_BROKER_SILENCE_S", str(SILENCE_S))
    (tmp_path / "repo").mkdir()
    log_file = tmp_path / "worker.log"
    broker = EmbeddedBroker().start()
    try:
        create_topics(broker.bootstrap)
        with running_worker(broker.bootstrap, tmp_path / "repo", "idle", log_file) as worker:

            def reachable() -> float:
                assert worker.process.poll() is None, f"the worker exited:\n{worker.log_tail()}"
                return worker.scrape().value("stream_broker_reachable")

            broker, during = _outage(broker, reachable, log_file, "the worker's stream_broker")
            metrics = worker.scrape()
            log = log_file.read_text()
    finally:
        broker.stop()
    watch_lines = [line for line in log.splitlines() if "Kafka at " in line]
    assert len(watch_lines) == 2, watch_lines
    assert f"Kafka at {broker.bootstrap} has not answered the stream worker for" in watch_lines[0]
    assert f"Kafka at {broker.bootstrap} answers again after" in watch_lines[1]
    assert metrics.value("stream_broker_outages_total") == 1.0
    shown = _kinds(_client_lines(log))
    assert len(shown) == len(set(shown)), log[-4000:]  # each kind once: the test is under a minute
    # only kinds first met in the outage (a refused bootstrap address, say): about 450 before
    assert len(_client_lines(during)) < 5, during[-2000:]
    assert len(_client_lines(log)) < 20, log[-4000:]  # about 450 in these seconds before


# -- an idle training agent whose broker is killed, then restarted ---------------------------


def _agent_client_lines(log: str) -> list[str]:
    """The agent's kafka-python WARNING and ERROR lines (its log reads 'LEVEL logger msg')."""
    return [line for line in log.splitlines() if re.search(r" (WARNING|ERROR) kafka[. ]", line)]


def test_an_idle_training_agent_says_once_that_it_lost_its_broker_and_once_that_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `headrace train agent` whose broker was killed logged about 130 kafka-python
    lines in 30 s ('No node available for metadata refresh', 'Connection failed: ...
    ECONNREFUSED', 'Connection lost', ...) and not one that said Kafka was away, nor one
    when it was back; /metrics had no word of it. Now, as the stream worker: one warning
    after HEADRACE_BROKER_SILENCE_S without an answer, the client's lines once per kind a
    minute, one line once Kafka answers again, and `training_broker_*` on /metrics."""
    from agent_fixtures import running_agent
    from server_fixtures import Metrics

    monkeypatch.setenv("HEADRACE_BROKER_SILENCE_S", str(SILENCE_S))
    (tmp_path / "repo").mkdir()
    (tmp_path / "runs").mkdir()
    log_file = tmp_path / "agent.log"
    broker = EmbeddedBroker().start()
    try:
        create_topics(broker.bootstrap)
        with running_agent(
            broker.bootstrap, tmp_path / "repo", tmp_path / "runs", "idle-agent", log_file,
            args=["--metrics-port", "0"], ray_cpus=1,
        ) as agent:  # fmt: skip

            def scrape() -> Metrics:
                assert agent.process.poll() is None, f"the agent exited:\n{agent.log_tail()}"
                url = f"http://127.0.0.1:{agent.fields['metrics']}/metrics"
                with urllib.request.urlopen(url, timeout=10) as response:
                    return Metrics(response.read().decode())

            def reachable() -> float:
                return scrape().value("training_broker_reachable")

            broker, during = _outage(broker, reachable, log_file, "the agent's training_broker")
            metrics = scrape()
            log = log_file.read_text()
    finally:
        broker.stop()
    watch_lines = [line for line in log.splitlines() if "streams.broker_watch" in line]
    assert len(watch_lines) == 2, watch_lines
    assert f"Kafka at {broker.bootstrap} has not answered the training agent for" in watch_lines[0]
    assert f"Kafka at {broker.bootstrap} answers again after" in watch_lines[1]
    assert metrics.value("training_broker_outages_total") == 1.0
    shown = _kinds(_agent_client_lines(log))
    assert len(shown) == len(set(shown)), log[-4000:]  # each kind once: the test is under a minute
    assert len(_agent_client_lines(during)) < 5, during[-2000:]  # about 30 in these seconds before
