"""Every metric the Grafana dashboard, the Prometheus-adapter rules and the HPAs name exists on
the /metrics of a real `headrace serve` or `headrace stream worker`, and the compose health
checks pass against those live processes.

The module starts one server and one worker (on an embedded broker, or the Apache Kafka of
HEADRACE_KAFKA_BOOTSTRAP), sends each real traffic (answered requests, a failure, a DLQ record,
a model published with a privacy budget) and scrapes them once. A name counts when the page
declares it: as a sample, or by its family's `# TYPE` line (a labelled metric has no sample
until it is first used).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from infra_checks import COMPOSE_FILE, compose_model
from kafka_fixtures import kafka_cluster
from metric_checks import (
    ADAPTER_FILE,
    DASHBOARD_FILE,
    adapter_metric_names,
    adapter_rules,
    dashboard_exprs,
    declared_names,
    promql_metric_names,
)
from server_fixtures import (
    digits_batch,
    inference_stub,
    lenet_config,
    raw_request,
    rpc_error,
    running_server,
)
from stream_fixtures import collect, json_request, producer, publish_lenet, running_worker

from serving.repository import ModelRepository

DP_MODEL = "lenet-dp"
METRICS_HOST = "127.0.0.2"


@dataclass
class Scrapes:
    server: set[str]
    worker: set[str]
    server_health: subprocess.CompletedProcess[str]
    worker_health: subprocess.CompletedProcess[str]


def healthcheck_script(service: str) -> str:
    """The Python one-liner of a compose service's healthcheck (`CMD python -c SCRIPT`)."""
    test = compose_model(COMPOSE_FILE)["services"][service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return str(test[3])


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrapes]:
    folder = tmp_path_factory.mktemp("infra-metrics")
    repository, model_file = publish_lenet(folder)
    ModelRepository(repository).publish(
        lenet_config(DP_MODEL), model_file, architecture="test", dp_epsilon=3.0, dp_delta=1e-5
    )
    with running_server(repository, log_dir=folder) as server:
        with inference_stub(server.address) as stub:
            for rows in (1, 3):
                stub.ModelInfer(raw_request("lenet", digits_batch(rows)), timeout=30)
            rpc_error(lambda: stub.ModelInfer(raw_request("lenet", digits_batch(1)[:, :, :5])))
        server_text = server.scrape().text
        server_health = run_script(
            healthcheck_script("serve").replace("127.0.0.1:8001", server.address)
        )
    with kafka_cluster() as bootstrap:
        group = f"infra-{uuid.uuid4().hex[:8]}"
        log = folder / "worker.log"
        # Another loopback address shows that --metrics-host is where /metrics listens.
        host_args = ("--metrics-host", METRICS_HOST)
        with running_worker(bootstrap, repository, group, log, args=host_args) as worker:
            tag = uuid.uuid4().hex[:6]
            ids = {f"m-{tag}-{i}" for i in range(8)}
            send = producer(bootstrap)
            for request_id in sorted(ids):
                value = json_request(request_id, digits_batch(1))
                send.send("inference-requests", key=request_id.encode(), value=value)
            bad = f"m-{tag}-bad"  # the worker takes a record's id from its key
            send.send("inference-requests", key=bad.encode(), value=b"{not json")
            send.flush()
            send.close()
            outcomes = collect(bootstrap, ids | {bad})
            assert {topic for topic, _ in outcomes.values()} == {
                "inference-results",
                "inference-dlq",
            }
            port = int(worker.fields["metrics"])
            with urllib.request.urlopen(f"http://{METRICS_HOST}:{port}/metrics") as response:
                worker_text = response.read().decode()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            worker_health = run_script(
                healthcheck_script("stream-worker").replace(
                    "127.0.0.1:8003/", f"{METRICS_HOST}:{port}/"
                )
            )
    yield Scrapes(
        declared_names(server_text), declared_names(worker_text), server_health, worker_health
    )


def missing_from(names: set[str], scrapes: Scrapes) -> set[str]:
    return names - scrapes.server - scrapes.worker


def dashboard_names(path: Path = DASHBOARD_FILE) -> set[str]:
    return set().union(*(promql_metric_names(e) for e in dashboard_exprs(path)))


def test_every_dashboard_metric_is_exported(scrapes: Scrapes) -> None:
    names = dashboard_names()
    assert len(names) >= 15, names
    assert missing_from(names, scrapes) == set()
    assert {n for n in names if n.startswith("stream_")} <= scrapes.worker


def test_every_autoscaling_metric_is_exported(scrapes: Scrapes) -> None:
    """Custom (per-pod) metrics come from the serve pods the HPA scales, the external lag
    metric from the workers."""
    rules = adapter_rules(ADAPTER_FILE)
    for rule in rules["rules"]:
        assert promql_metric_names(rule["seriesQuery"]) <= scrapes.server, rule["seriesQuery"]
    for rule in rules["externalRules"]:
        assert promql_metric_names(rule["seriesQuery"]) <= scrapes.worker, rule["seriesQuery"]
    assert missing_from(adapter_metric_names(ADAPTER_FILE), scrapes) == set()


def test_name_check_fails_on_a_broken_dashboard_copy(scrapes: Scrapes, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    target = dashboard["panels"][0]["targets"][0]
    target["expr"] = re.sub(r"inference_\w+_total", "inference_requests_ok_total", target["expr"])
    broken = tmp_path / "headrace.json"
    broken.write_text(json.dumps(dashboard))
    before = missing_from(dashboard_names(), scrapes)
    assert missing_from(dashboard_names(broken), scrapes) - before == {
        "inference_requests_ok_total"
    }


def test_compose_healthchecks_pass_on_live_processes(scrapes: Scrapes) -> None:
    for done in (scrapes.server_health, scrapes.worker_health):
        assert done.returncode == 0, done.stderr


def test_serve_healthcheck_fails_without_a_server() -> None:
    from streams.broker import free_port

    script = healthcheck_script("serve").replace("127.0.0.1:8001", f"127.0.0.1:{free_port()}")
    assert run_script(script).returncode != 0
