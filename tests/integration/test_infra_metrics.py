"""Every metric the Grafana dashboard, the Prometheus-adapter rules and the HPAs name exists on
the /metrics of a real `headrace serve`, `headrace stream worker` or `headrace train agent`,
and the compose health checks pass against those live processes.

The module starts one server, one worker and one training agent (on an embedded broker, or the
Apache Kafka of HEADRACE_KAFKA_BOOTSTRAP), sends each real traffic (answered requests, a
failure, a DLQ record, a model published with a privacy budget; a one-epoch training job) and
scrapes them once. A name counts when the page
declares it: as a sample, or by its family's `# TYPE` line (a labelled metric has no sample
until it is first used).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_fixtures import running_agent
from infra_checks import COMPOSE_FILE, compose_model
from kafka_fixtures import kafka_cluster
from metric_checks import (
    ADAPTER_FILE,
    DASHBOARD_FILE,
    adapter_metric_names,
    adapter_rules,
    alert_exprs,
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
from streams.job_client import read_events, submit_job
from streams.job_messages import TERMINAL_EVENTS, TrainingEvent
from training.job_spec import parse_job_spec

DP_MODEL = "lenet-dp"
METRICS_HOST = "127.0.0.2"
TRAINED_MODEL = "digits-agent"
JOB_TIMEOUT_S = 120.0


@dataclass
class Scrapes:
    server: set[str]
    worker: set[str]
    agent: set[str]
    agent_text: str  # the agent's page, for its values
    server_health: subprocess.CompletedProcess[str]
    worker_health: subprocess.CompletedProcess[str]
    agent_health: subprocess.CompletedProcess[str]
    job: list[TrainingEvent]  # the job's events, accepted to its end


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
    with kafka_cluster() as bootstrap, contextlib.ExitStack() as exits:
        group = f"infra-{uuid.uuid4().hex[:8]}"
        log = folder / "worker.log"
        # Another loopback address shows that --metrics-host is where /metrics listens.
        host_args = ("--metrics-host", METRICS_HOST)
        agent_args = ("--metrics-port", "0", *host_args)
        # The agent publishes into its own repository, so the worker's models stay as they are.
        agent = exits.enter_context(
            running_agent(
                bootstrap, folder / "agent-repo", folder / "runs", f"{group}-agent",
                folder / "agent.log", args=agent_args,
            )
        )  # fmt: skip
        spec = {"model": "lenet5", "dataset": "digits", "name": TRAINED_MODEL, "epochs": 1}
        job_id = submit_job(bootstrap, parse_job_spec(spec))  # trains during what follows
        with running_server(repository, log_dir=folder) as server:
            with inference_stub(server.address) as stub:
                for rows in (1, 3):
                    stub.ModelInfer(raw_request("lenet", digits_batch(rows)), timeout=30)
                rpc_error(lambda: stub.ModelInfer(raw_request("lenet", digits_batch(1)[:, :, :5])))
            server_text = server.scrape().text
            server_health = run_script(
                healthcheck_script("serve").replace("127.0.0.1:8001", server.address)
            )
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
        job = job_events(bootstrap, job_id, agent.log_tail)
        agent_port = int(agent.fields["metrics"])
        # The agent updates its metrics before it puts an event on the topic: no wait needed.
        with urllib.request.urlopen(f"http://{METRICS_HOST}:{agent_port}/metrics") as response:
            agent_text = response.read().decode()
        agent_health = run_script(
            healthcheck_script("training-agent").replace(
                "127.0.0.1:8004/", f"{METRICS_HOST}:{agent_port}/"
            )
        )
    yield Scrapes(
        declared_names(server_text),
        declared_names(worker_text),
        declared_names(agent_text),
        agent_text,
        server_health,
        worker_health,
        agent_health,
        job,
    )


def job_events(bootstrap: str, job_id: str, log_tail: Callable[[], str]) -> list[TrainingEvent]:
    """The job's events once it has ended (or fail after JOB_TIMEOUT_S, with the agent's log)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        history = list(read_events(bootstrap, job_id, idle_s=0.5))
        if history and history[-1].event in TERMINAL_EVENTS:
            return history
    raise AssertionError(f"job {job_id} did not end in {JOB_TIMEOUT_S:g} s:\n" + log_tail())


def missing_from(names: set[str], scrapes: Scrapes) -> set[str]:
    return names - scrapes.server - scrapes.worker - scrapes.agent


def dashboard_names(path: Path = DASHBOARD_FILE) -> set[str]:
    return set().union(*(promql_metric_names(e) for e in dashboard_exprs(path)))


def test_every_dashboard_metric_is_exported(scrapes: Scrapes) -> None:
    names = dashboard_names()
    assert len(names) >= 15, names
    assert missing_from(names, scrapes) == set()
    assert {n for n in names if n.startswith("stream_")} <= scrapes.worker
    assert {n for n in names if n.startswith("training_")} <= scrapes.agent


def test_every_alert_metric_is_exported(scrapes: Scrapes) -> None:
    """infra/prometheus/alerts.yml reads only series the services export (`up` is
    Prometheus's own), so no alert is silently never able to fire."""
    names = set().union(*(promql_metric_names(e) for e in alert_exprs().values())) - {"up"}
    assert len(names) >= 6, names
    assert missing_from(names, scrapes) == set()


def test_the_agent_exports_the_job_it_ran(scrapes: Scrapes) -> None:
    """The per-model series carry the trained job's values (not just their names)."""
    from prometheus_client.parser import text_string_to_metric_families

    assert scrapes.job[-1].event == "succeeded", scrapes.job[-1].describe()
    epoch = next(e for e in scrapes.job if e.event == "epoch")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scrapes.agent_text)
        for s in family.samples
    }
    model = (("model", TRAINED_MODEL),)
    assert samples[("training_jobs_total", (("outcome", "succeeded"),))] == 1.0
    assert samples[("training_jobs_running", ())] == 0.0
    assert samples[("training_epoch", model)] == samples[("training_epochs", model)] == 1.0
    assert samples[("training_val_accuracy", model)] == epoch.val_accuracy
    assert samples[("training_samples_per_second", model)] == epoch.samples_per_s
    assert samples[("training_epoch_duration_seconds_sum", model)] == epoch.epoch_s
    assert samples[("training_published_version", model)] == scrapes.job[-1].version


def test_every_autoscaling_metric_is_exported(scrapes: Scrapes) -> None:
    """Custom (per-pod) metrics come from the serve pods the HPA scales, the external lag
    metric from the workers."""
    rules = adapter_rules(ADAPTER_FILE)
    for rule in rules["rules"]:
        assert promql_metric_names(rule["seriesQuery"]) <= scrapes.server, rule["seriesQuery"]
    for rule in rules["externalRules"]:
        assert promql_metric_names(rule["seriesQuery"]) <= scrapes.worker, rule["seriesQuery"]
    assert missing_from(adapter_metric_names(ADAPTER_FILE), scrapes) == set()


@pytest.mark.parametrize(
    ("title", "pattern", "wrong"),
    [
        ("Throughput", r"inference_\w+_total", "inference_requests_ok_total"),
        ("Training progress", r"training_val_accuracy", "training_validation_accuracy"),
    ],
)
def test_name_check_fails_on_a_broken_dashboard_copy(
    scrapes: Scrapes, tmp_path: Path, title: str, pattern: str, wrong: str
) -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    panel = next(p for p in dashboard["panels"] if p["title"] == title)
    for target in panel["targets"]:
        target["expr"] = re.sub(pattern, wrong, target["expr"])
    broken = tmp_path / "headrace.json"
    broken.write_text(json.dumps(dashboard))
    before = missing_from(dashboard_names(), scrapes)
    assert missing_from(dashboard_names(broken), scrapes) - before == {wrong}


def test_compose_healthchecks_pass_on_live_processes(scrapes: Scrapes) -> None:
    for done in (scrapes.server_health, scrapes.worker_health, scrapes.agent_health):
        assert done.returncode == 0, done.stderr


def test_serve_healthcheck_fails_without_a_server() -> None:
    from streams.broker import free_port

    script = healthcheck_script("serve").replace("127.0.0.1:8001", f"127.0.0.1:{free_port()}")
    assert run_script(script).returncode != 0
