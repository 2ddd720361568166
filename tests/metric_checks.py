"""Checks of the monitoring files in infra/: Prometheus's config, the Grafana dashboard, the
Prometheus-adapter rules and the HorizontalPodAutoscalers, and the metric names they query.

No PyPI package ships promtool, so the Prometheus config is read into pydantic models of the
part of its format we use (unknown keys are problems) and checked against the compose services;
`promtool` runs too when it is installed (Debian's `prometheus` package has it), on the config
and on every PromQL expression (as recording rules). The metric names in PromQL are extracted
by a small tokenizer: string literals, label matchers, ranges and grouping clauses removed,
identifiers not followed by `(` are series names; unknown functions are problems.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
INFRA = REPO_ROOT / "infra"
PROMETHEUS_FILE = INFRA / "prometheus" / "prometheus.yml"
ALERTS_FILE = INFRA / "prometheus" / "alerts.yml"
ALERTS_TEST_FILE = INFRA / "prometheus" / "alerts_test.yml"
DASHBOARD_FILE = INFRA / "grafana" / "dashboards" / "headrace.json"
DATASOURCES_DIR = INFRA / "grafana" / "provisioning" / "datasources"
K8S_DIR = INFRA / "k8s"
ADAPTER_FILE = K8S_DIR / "prometheus-adapter.yaml"

DURATION = r"^(\d+(ms|s|m|h|d|w|y))+$"
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes",
    "clamp", "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta",
    "deriv", "exp", "floor", "group", "histogram_quantile", "holt_winters", "idelta",
    "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log2",
    "log10", "max", "max_over_time", "min", "min_over_time", "predict_linear", "quantile",
    "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc",
    "sqrt", "stddev", "stddev_over_time", "stdvar", "sum", "sum_over_time", "time",
    "timestamp", "topk", "vector",
}  # fmt: skip
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan",
}  # fmt: skip


# -- PromQL ------------------------------------------------------------------------------


def promql_problems(expr: str) -> list[str]:
    """Unbalanced brackets and unknown functions in one expression."""
    problems = []
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for char in re.sub(r'"[^"]*"|\'[^\']*\'', '""', expr):
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                problems.append(f"unbalanced {char!r} in {expr!r}")
    problems += [f"unclosed {k!r} in {expr!r}" for k, v in depth.items() if v > 0]
    for name in _identifiers(expr, functions=True):
        if name not in FUNCTIONS:
            problems.append(f"unknown function {name}() in {expr!r}")
    return problems


def _identifiers(expr: str, functions: bool) -> set[str]:
    text = re.sub(r'"[^"]*"|\'[^\']*\'', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        name = match.group()
        is_call = text[match.end() :].lstrip().startswith("(")
        if name.lower() in KEYWORDS or is_call != functions:
            continue
        found.add(name)
    return found


def promql_metric_names(expr: str) -> set[str]:
    """Series names an expression reads."""
    return _identifiers(expr, functions=False)


def promtool() -> Path | None:
    """promtool from $PROMTOOL, the virtualenv (`make install` unpacks it there where apt-get
    works: infra/get-promtool.sh) or PATH, if this machine has it."""
    beside_python = Path(sys.executable).parent / "promtool"
    found = os.environ.get("PROMTOOL") or (
        str(beside_python) if beside_python.is_file() else shutil.which("promtool")
    )
    return Path(found) if found else None


def promtool_problems(exprs: Iterable[str], folder: Path) -> list[str]:
    """Parse every expression with Prometheus's own parser (`promtool check rules`)."""
    tool = promtool()
    assert tool is not None, "no promtool"
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = folder / "exprs.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    done = subprocess.run(
        [str(tool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    return [] if done.returncode == 0 else [(done.stdout + done.stderr).strip()]


def declared_names(exposition: str) -> set[str]:
    """Series names a /metrics page declares: its samples, plus the names each `# TYPE`
    family would have once it has a sample (a labelled metric shows none until then)."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("_count", "_sum", ""),
    }
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


# -- prometheus.yml ----------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StaticConfig(_Strict):
    targets: list[str] = Field(min_length=1)
    labels: dict[str, str] = {}

    @model_validator(mode="after")
    def _host_ports(self) -> StaticConfig:
        for target in self.targets:
            host, _, port = target.rpartition(":")
            if not host or not port.isdecimal():
                raise ValueError(f"target {target!r} must be HOST:PORT")
        return self


class DnsSdConfig(_Strict):
    names: list[str] = Field(min_length=1)
    type: Literal["SRV", "A", "AAAA", "MX", "NS"] = "SRV"
    port: int | None = Field(default=None, ge=1, le=65535)
    refresh_interval: str = Field(default="30s", pattern=DURATION)

    @model_validator(mode="after")
    def _port(self) -> DnsSdConfig:
        if self.type != "SRV" and self.port is None:
            raise ValueError(f"a DNS {self.type} lookup needs a port")
        return self


class ScrapeConfig(_Strict):
    job_name: str = Field(min_length=1)
    scrape_interval: str | None = Field(default=None, pattern=DURATION)
    scrape_timeout: str | None = Field(default=None, pattern=DURATION)
    metrics_path: str = "/metrics"
    scheme: Literal["http", "https"] = "http"
    static_configs: list[StaticConfig] = []
    dns_sd_configs: list[DnsSdConfig] = []

    @model_validator(mode="after")
    def _has_targets(self) -> ScrapeConfig:
        if not self.static_configs and not self.dns_sd_configs:
            raise ValueError(f"job {self.job_name} has no targets")
        return self

    def targets(self) -> list[tuple[str, int]]:
        pairs = [
            (host, int(port))
            for static in self.static_configs
            for host, _, port in (t.rpartition(":") for t in static.targets)
        ]
        pairs += [(name, d.port or 0) for d in self.dns_sd_configs for name in d.names]
        return pairs


class GlobalConfig(_Strict):
    scrape_interval: str = Field(default="1m", pattern=DURATION)
    scrape_timeout: str = Field(default="10s", pattern=DURATION)
    evaluation_interval: str = Field(default="1m", pattern=DURATION)


class PrometheusConfig(_Strict):
    global_: GlobalConfig = Field(default_factory=GlobalConfig, alias="global")
    rule_files: list[str] = []
    scrape_configs: list[ScrapeConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_jobs(self) -> PrometheusConfig:
        names = [job.job_name for job in self.scrape_configs]
        if len(names) != len(set(names)):
            raise ValueError(f"job names repeat: {names}")
        return self


def prometheus_problems(path: Path, metrics_ports: dict[str, int]) -> list[str]:
    """The config's schema, then its targets against `metrics_ports` (compose service ->
    the port its command serves /metrics on): each target is such a service on that port (or
    Prometheus itself), and every such service is scraped."""
    try:
        config = PrometheusConfig.model_validate(yaml.safe_load(path.read_text()))
    except (ValidationError, yaml.YAMLError) as exc:
        return [f"{path.name}: {exc}"]
    problems = []
    scraped = set()
    for job in config.scrape_configs:
        for host, port in job.targets():
            if host == "localhost" and port == 9090:
                continue
            if host not in metrics_ports:
                problems.append(f"job {job.job_name}: {host} is no service serving /metrics")
            elif port != metrics_ports[host]:
                problems.append(
                    f"job {job.job_name}: {host}:{port}, but {host} serves /metrics on "
                    f"{metrics_ports[host]}"
                )
            scraped.add(host)
    problems += [f"service {s} is not scraped" for s in sorted(set(metrics_ports) - scraped)]
    return problems


def compose_metrics_ports(model: dict[str, Any]) -> dict[str, int]:
    """Compose service -> the --metrics-port of its command, for services that have one."""
    ports = {}
    for name, service in model["services"].items():
        command = [str(c) for c in service.get("command") or []]
        if "--metrics-port" in command:
            ports[name] = int(command[command.index("--metrics-port") + 1])
    return ports


# -- the Grafana dashboard ---------------------------------------------------------------


class DataSourceRef(BaseModel):
    type: Literal["prometheus"]
    uid: str = Field(min_length=1)


class Target(BaseModel):
    refId: str = Field(min_length=1)
    expr: str = Field(min_length=1)
    datasource: DataSourceRef
    legendFormat: str = ""


class GridPos(_Strict):
    x: int = Field(ge=0, le=23)
    y: int = Field(ge=0)
    w: int = Field(ge=1, le=24)
    h: int = Field(ge=1)

    @model_validator(mode="after")
    def _fits(self) -> GridPos:
        if self.x + self.w > 24:
            raise ValueError(f"panel at x={self.x} of width {self.w} overflows the 24 columns")
        return self

    def cells(self) -> set[tuple[int, int]]:
        return {
            (x, y) for x in range(self.x, self.x + self.w) for y in range(self.y, self.y + self.h)
        }


class Panel(BaseModel):
    id: int = Field(ge=1)
    type: Literal["timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"]
    title: str = Field(min_length=1)
    datasource: DataSourceRef
    gridPos: GridPos
    targets: list[Target] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_refs(self) -> Panel:
        refs = [t.refId for t in self.targets]
        if len(refs) != len(set(refs)):
            raise ValueError(f"panel {self.title!r}: refIds repeat: {refs}")
        return self


class Dashboard(BaseModel):
    uid: str = Field(min_length=1, max_length=40)
    title: str = Field(min_length=1)
    schemaVersion: int = Field(ge=30)
    panels: list[Panel] = Field(min_length=1)

    @model_validator(mode="after")
    def _layout(self) -> Dashboard:
        ids = [p.id for p in self.panels]
        if len(ids) != len(set(ids)):
            raise ValueError(f"panel ids repeat: {ids}")
        taken: set[tuple[int, int]] = set()
        for panel in self.panels:
            cells = panel.gridPos.cells()
            if cells & taken:
                raise ValueError(f"panel {panel.title!r} overlaps another panel")
            taken |= cells
        return self


def provisioned_datasource_uids(folder: Path = DATASOURCES_DIR) -> set[str]:
    return {
        source["uid"]
        for path in sorted(folder.glob("*.yml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    }


def alert_exprs(path: Path = ALERTS_FILE) -> dict[str, str]:
    """Alert name -> its PromQL expression, from a Prometheus rules file."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_exprs(path: Path) -> list[str]:
    return [t["expr"] for p in json.loads(path.read_text())["panels"] for t in p["targets"]]


def dashboard_problems(path: Path, datasource_uids: set[str]) -> list[str]:
    """The dashboard's structure, its data source against the provisioned ones, its PromQL."""
    try:
        dashboard = Dashboard.model_validate_json(path.read_text())
    except ValidationError as exc:
        return [f"{path.name}: {exc}"]
    problems = []
    for panel in dashboard.panels:
        for ref in [panel.datasource, *(t.datasource for t in panel.targets)]:
            if ref.uid not in datasource_uids:
                problems.append(f"panel {panel.title!r}: data source {ref.uid!r} not provisioned")
        for target in panel.targets:
            problems += [f"panel {panel.title!r}: {p}" for p in promql_problems(target.expr)]
            if not promql_metric_names(target.expr):
                problems.append(f"panel {panel.title!r}: {target.expr!r} reads no metric")
    return problems


# -- HorizontalPodAutoscalers and the Prometheus adapter ---------------------------------


def hpa_metric_names(documents: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """Metric type ("pods", "external", ...) -> the custom metric names the HPAs ask for."""
    found: dict[str, set[str]] = {}
    for doc in documents:
        if doc.get("kind") != "HorizontalPodAutoscaler":
            continue
        for metric in doc["spec"].get("metrics", []):
            kind = metric["type"].lower()
            if kind in ("pods", "external", "object"):
                found.setdefault(kind, set()).add(metric[kind]["metric"]["name"])
    return found


def adapter_rules(path: Path = ADAPTER_FILE) -> dict[str, list[dict[str, Any]]]:
    """The adapter's `rules` (custom metrics) and `externalRules` from its ConfigMap."""
    config_map = next(d for d in yaml.safe_load_all(path.read_text()) if d)
    config: dict[str, list[dict[str, Any]]] = yaml.safe_load(config_map["data"]["config.yaml"])
    return config


def adapter_query(rule: dict[str, Any]) -> str:
    """The rule's metricsQuery as PromQL, its templates filled in as the adapter would."""
    series = sorted(promql_metric_names(rule["seriesQuery"]))[0]
    query = str(rule["metricsQuery"]).replace("<<.Series>>", series)
    return query.replace("<<.LabelMatchers>>", 'namespace="headrace"').replace(
        "<<.GroupBy>>", "pod"
    )


def adapter_problems(path: Path, hpa_names: dict[str, set[str]]) -> list[str]:
    """Every name an HPA asks for is served by an adapter rule of the right kind, and every
    rule's queries are well-formed PromQL."""
    try:
        rules = adapter_rules(path)
    except (StopIteration, KeyError, yaml.YAMLError) as exc:
        return [f"{path.name}: no adapter config ({exc!r})"]
    problems = []
    served = {
        "pods": {r["name"]["as"] for r in rules.get("rules", [])},
        "external": {r["name"]["as"] for r in rules.get("externalRules", [])},
    }
    for kind, names in hpa_names.items():
        for name in sorted(names - served.get(kind, set())):
            problems.append(f"an HPA asks for {kind} metric {name}, which no adapter rule serves")
    for rule in [*rules.get("rules", []), *rules.get("externalRules", [])]:
        for expr in (rule["seriesQuery"], adapter_query(rule)):
            problems += promql_problems(expr)
        if not re.search(
            str(rule["name"]["matches"]), sorted(promql_metric_names(rule["seriesQuery"]))[0]
        ):
            problems.append(f"rule {rule['name']}: `matches` does not match its series")
    return problems


def adapter_metric_names(path: Path = ADAPTER_FILE) -> set[str]:
    """Series the adapter rules read from Prometheus."""
    rules = adapter_rules(path)
    names: set[str] = set()
    for rule in [*rules.get("rules", []), *rules.get("externalRules", [])]:
        names |= promql_metric_names(rule["seriesQuery"]) | promql_metric_names(adapter_query(rule))
    return names
