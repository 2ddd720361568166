"""Prometheus's config, the Grafana dashboard, the Prometheus-adapter rules and the HPAs'
metrics, checked offline (pydantic models of the formats, our PromQL tokenizer, promtool where
installed); broken copies must fail. That the metric names exist on a live /metrics is
tests/integration/test_infra_metrics.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from infra_checks import COMPOSE_FILE, K8S_DIR, compose_model, k8s_documents
from metric_checks import (
    ADAPTER_FILE,
    ALERTS_FILE,
    ALERTS_TEST_FILE,
    DASHBOARD_FILE,
    PROMETHEUS_FILE,
    adapter_problems,
    alert_exprs,
    compose_metrics_ports,
    dashboard_exprs,
    dashboard_problems,
    hpa_metric_names,
    prometheus_problems,
    promql_metric_names,
    promql_problems,
    promtool,
    promtool_problems,
    provisioned_datasource_uids,
)

needs_promtool = pytest.mark.skipif(
    promtool() is None,
    reason="promtool not installed (Debian: apt-get install prometheus; or set PROMTOOL)",
)


@pytest.fixture(scope="module")
def metrics_ports() -> dict[str, int]:
    return compose_metrics_ports(compose_model(COMPOSE_FILE))


def k8s_hpa_names() -> dict[str, set[str]]:
    return hpa_metric_names(d for p in sorted(K8S_DIR.glob("*.yaml")) for d in k8s_documents(p))


# -- PromQL ------------------------------------------------------------------------------


def test_promql_names_and_problems() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(a_seconds_bucket{job="x"}[1m])))'
        " / clamp_min(sum(rate(b_total[5m])) by (pod), 1e-9) + c offset 5m"
    )
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}
    assert promql_problems(expr) == []
    assert promql_problems("sum(rate(x[1m])") == ["unclosed '(' in 'sum(rate(x[1m])'"]
    assert promql_problems("sum(x))") == ["unbalanced ')' in 'sum(x))'"]
    assert promql_problems("histogram_quantil(0.5, x)") == [
        "unknown function histogram_quantil() in 'histogram_quantil(0.5, x)'"
    ]


# -- prometheus.yml ----------------------------------------------------------------------


def test_prometheus_config_scrapes_every_metrics_port(metrics_ports: dict[str, int]) -> None:
    assert metrics_ports == {"serve": 8002, "stream-worker": 8003, "training-agent": 8004}
    assert prometheus_problems(PROMETHEUS_FILE, metrics_ports) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('"serve:8002"', '"serve:8001"', "serve serves /metrics on 8002"),
        ('"serve:8002"', '"server:8002"', "server is no service"),
        ("port: 8003", "port: 8004", "stream-worker serves /metrics on 8003"),
        (
            '"training-agent:8004"',
            '"training-agent:8003"',
            "training-agent serves /metrics on 8004",
        ),
        ("  scrape_interval: 5s", "  scrape_interva: 5s", "scrape_interva"),
        ("  scrape_interval: 5s", "  scrape_interval: 5 seconds", "scrape_interval"),
        ("        type: A\n", "        type: B\n", "type"),
        ('      - targets: ["serve:8002"]', '      - targets: ["serve"]', "HOST:PORT"),
    ],
)
def test_prometheus_check_fails_on_a_broken_copy(
    tmp_path: Path, metrics_ports: dict[str, int], old: str, new: str, expected: str
) -> None:
    text = PROMETHEUS_FILE.read_text()
    assert old in text
    broken = tmp_path / "prometheus.yml"
    broken.write_text(text.replace(old, new))
    problems = prometheus_problems(broken, metrics_ports)
    assert any(expected in p for p in problems), problems


def test_prometheus_check_fails_when_a_service_is_not_scraped(
    tmp_path: Path, metrics_ports: dict[str, int]
) -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    config["scrape_configs"] = [
        j for j in config["scrape_configs"] if j["job_name"] != "headrace-stream-worker"
    ]
    broken = tmp_path / "prometheus.yml"
    broken.write_text(yaml.safe_dump(config))
    assert prometheus_problems(broken, metrics_ports) == ["service stream-worker is not scraped"]


@needs_promtool
def test_promtool_accepts_the_config_and_refuses_a_broken_copy(tmp_path: Path) -> None:
    import subprocess

    tool = str(promtool())
    good = subprocess.run([tool, "check", "config", str(PROMETHEUS_FILE)], capture_output=True)
    assert good.returncode == 0, good.stdout + good.stderr
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_FILE.read_text().replace("type: A", "type: B"))
    bad = subprocess.run([tool, "check", "config", str(broken)], capture_output=True)
    assert bad.returncode != 0


# -- alerting rules ----------------------------------------------------------------------


def test_the_alerting_rules_are_loaded_and_mounted() -> None:
    """prometheus.yml loads alerts.yml, and the compose stack mounts it beside the config."""
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    assert config["rule_files"] == [ALERTS_FILE.name]
    volumes = compose_model(COMPOSE_FILE)["services"]["prometheus"]["volumes"]
    mounted = {Path(v["source"]): v["target"] for v in volumes}
    assert mounted[ALERTS_FILE] == "/etc/prometheus/alerts.yml"
    assert mounted[PROMETHEUS_FILE] == "/etc/prometheus/prometheus.yml"


def test_every_alert_has_a_severity_a_summary_and_parses() -> None:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(alert_exprs()) >= 8  # alert names do not repeat
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert promql_problems(rule["expr"]) == [], rule["alert"]


@needs_promtool
def test_promtool_checks_the_rules_and_their_unit_tests_pass(tmp_path: Path) -> None:
    """`promtool test rules` feeds series to each alert and checks which fire and which must
    not; a copy with a threshold moved fails it."""
    import shutil
    import subprocess

    tool = str(promtool())
    check = subprocess.run([tool, "check", "rules", str(ALERTS_FILE)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [tool, "test", "rules", ALERTS_TEST_FILE.name],
        cwd=ALERTS_FILE.parent, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    shutil.copy(ALERTS_TEST_FILE, tmp_path)
    moved = ALERTS_FILE.read_text().replace("> 0.01\n", "> 0.03\n")
    assert moved != ALERTS_FILE.read_text()
    (tmp_path / ALERTS_FILE.name).write_text(moved)
    broken = subprocess.run(
        [tool, "test", "rules", ALERTS_TEST_FILE.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert broken.returncode != 0
    assert "HeadraceInferenceLoadShedding" in broken.stdout + broken.stderr


# -- the Grafana dashboard ---------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    assert dashboard_problems(DASHBOARD_FILE, provisioned_datasource_uids()) == []
    titles = [p["title"] for p in json.loads(DASHBOARD_FILE.read_text())["panels"]]
    for topic in ("Throughput", "latency", "Batch sizes", "Queue depth", "Consumer lag", "DLQ",
                  "Privacy budget", "Training progress", "Training jobs"):  # fmt: skip
        assert any(topic in title for title in titles), (topic, titles)
    quantiles = [e for e in dashboard_exprs(DASHBOARD_FILE) if "histogram_quantile" in e]
    assert quantiles and all("_bucket[" in e for e in quantiles)


def _broken_dashboard(tmp_path: Path, edit: str) -> Path:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    panel = dashboard["panels"][0]
    if edit == "function":
        panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace("rate(", "rat(")
    elif edit == "datasource":
        panel["datasource"]["uid"] = "prom"
    elif edit == "overlap":
        panel["gridPos"] = dict(dashboard["panels"][1]["gridPos"])
    elif edit == "refid":
        panel["targets"][1]["refId"] = panel["targets"][0]["refId"]
    elif edit == "parenthesis":
        panel["targets"][0]["expr"] += ")"
    path = tmp_path / "headrace.json"
    path.write_text(json.dumps(dashboard))
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("function", "unknown function rat()"),
        ("datasource", "data source 'prom' not provisioned"),
        ("overlap", "overlaps another panel"),
        ("refid", "refIds repeat"),
        ("parenthesis", "unbalanced ')'"),
    ],
)
def test_dashboard_check_fails_on_a_broken_copy(tmp_path: Path, edit: str, expected: str) -> None:
    problems = dashboard_problems(_broken_dashboard(tmp_path, edit), provisioned_datasource_uids())
    assert any(expected in p for p in problems), problems


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    assert promtool_problems(dashboard_exprs(DASHBOARD_FILE), tmp_path) == []
    broken = _broken_dashboard(tmp_path, "parenthesis")
    assert promtool_problems(dashboard_exprs(broken), tmp_path)


# -- HPAs and the Prometheus adapter -----------------------------------------------------


def test_every_hpa_metric_is_served_by_an_adapter_rule() -> None:
    names = k8s_hpa_names()
    assert names == {
        "pods": {"inference_in_flight_requests", "inference_queue_duration_seconds"},
        "external": {"stream_consumer_lag"},
    }
    assert adapter_problems(ADAPTER_FILE, names) == []


def test_adapter_check_fails_on_a_broken_copy(tmp_path: Path) -> None:
    names = k8s_hpa_names()
    names["pods"] = names["pods"] | {"inference_queue_time"}
    assert adapter_problems(ADAPTER_FILE, names) == [
        "an HPA asks for pods metric inference_queue_time, which no adapter rule serves"
    ]
    broken = tmp_path / "prometheus-adapter.yaml"
    broken.write_text(ADAPTER_FILE.read_text().replace("by (topic)'", "by (topic)))'"))
    assert any("unbalanced ')'" in p for p in adapter_problems(broken, k8s_hpa_names()))
