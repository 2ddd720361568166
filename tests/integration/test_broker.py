"""The embedded Tansu broker: starts on a free port, speaks Kafka, and stops by pid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka_fixtures import kafka_cluster

from streams.broker import EmbeddedBroker, answers_metadata, pid_alive


def test_embedded_broker_round_trip() -> None:
    with EmbeddedBroker() as broker:
        assert broker.process is not None
        pid = broker.process.pid
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        producer.send("roundtrip", key=b"id-1", value=b"hello", headers=[("h", b"v")]).get(10)
        producer.close()
        consumer = KafkaConsumer(
            "roundtrip",
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=10_000,
        )
        record = next(iter(consumer))
        consumer.close()
        assert (record.key, record.value, record.headers) == (b"id-1", b"hello", [("h", b"v")])
    assert not pid_alive(pid)
    assert not answers_metadata(broker.bootstrap, timeout_s=0.5)


def _cli(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace", "broker", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_broker_cli_start_status_stop(tmp_path: Path) -> None:
    started = _cli("start", state_dir=tmp_path)
    assert started.returncode == 0, started.stderr
    state = json.loads((tmp_path / "broker.json").read_text())
    try:
        status = _cli("status", "--json", state_dir=tmp_path)
        assert status.returncode == 0
        assert json.loads(status.stdout) == {
            "running": True,
            "answering": True,
            "pid": state["pid"],
            "bootstrap": f"127.0.0.1:{state['port']}",
        }
        again = _cli("start", state_dir=tmp_path)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        stopped = _cli("stop", state_dir=tmp_path)
    assert stopped.returncode == 0
    assert not pid_alive(state["pid"])
    assert _cli("status", state_dir=tmp_path).returncode == 1


def test_topic_catalogue_created_idempotently() -> None:
    from streams.topics import CATALOGUE, create_topics, data_topic, list_topics

    with kafka_cluster() as bootstrap:  # embedded, or Apache Kafka with these topics deleted
        first = create_topics(bootstrap, [*CATALOGUE, data_topic("digits")])
        assert set(first.values()) == {"created"}
        again = create_topics(bootstrap)
        assert set(again.values()) == {"exists"}
        found = list_topics(bootstrap)
    for spec in CATALOGUE:
        assert found[spec.name] == spec.partitions
    assert "data-digits" in found


def test_broker_cli_refuses_a_port_another_broker_listens_on(tmp_path: Path) -> None:
    # The other broker answered the readiness check while the new one exited on its bind
    # error: `start` reported success and recorded a dead pid.
    with EmbeddedBroker() as other:
        started = _cli("start", "--port", str(other.port), state_dir=tmp_path)
        assert started.returncode == 2, started.stdout
        assert started.stderr.startswith("error: port ") and "in use" in started.stderr
        assert not (tmp_path / "broker.json").exists()
        assert answers_metadata(other.bootstrap)


def test_broker_cli_never_signals_a_process_that_took_the_recorded_pid(tmp_path: Path) -> None:
    # A broker that died (a crash, a reboot) leaves its record; its pid may belong to another
    # process by now, which `stop` used to SIGTERM and `start` took for a running broker.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        record = {"pid": stranger.pid, "host": "127.0.0.1", "port": 1}
        (tmp_path / "broker.json").write_text(json.dumps(record))
        status = _cli("status", "--json", state_dir=tmp_path)
        assert status.returncode == 1 and json.loads(status.stdout)["running"] is False
        stopped = _cli("stop", state_dir=tmp_path)
        assert stopped.returncode == 0 and "was not running" in stopped.stdout
        assert stranger.poll() is None, "broker stop signalled an unrelated process"
        assert not (tmp_path / "broker.json").exists()
        (tmp_path / "broker.json").write_text(json.dumps(record))
        started = _cli("start", state_dir=tmp_path)
        assert started.returncode == 0, started.stderr
        assert _cli("stop", state_dir=tmp_path).returncode == 0
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_broker_cli_unusable_state_dir_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    started = _cli("start", state_dir=tmp_path / "file" / "state")
    assert started.returncode == 2
    assert started.stderr.startswith("error: cannot keep the broker's record in ")
    assert "Traceback" not in started.stderr
