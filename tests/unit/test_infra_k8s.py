"""infra/k8s/*.yaml against the Kubernetes JSON schemas (kubernetes-validate, strict, oldest and
newest supported versions), and against the code: container args parse with our CLI, grace
periods cover the drain, probes use gRPC health; broken copies must fail."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from infra_checks import (
    K8S_DIR,
    containers,
    k8s_consistency_problems,
    k8s_documents,
    k8s_problems,
)

MANIFESTS = sorted(K8S_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schemas(path: Path) -> None:
    assert k8s_documents(path), "empty manifest"
    assert k8s_problems(path) == []


def test_manifests_agree_with_the_code() -> None:
    documents = [doc for path in MANIFESTS for doc in k8s_documents(path)]
    kinds = {doc["kind"] for doc in documents}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= kinds
    assert {"PersistentVolumeClaim"} <= kinds
    assert k8s_consistency_problems(documents) == []
    commands = [c["args"][:2] for _pod, c in containers(documents)]
    assert ["serve", "--host"] in commands and ["stream", "worker"] in commands
    assert ["train", "agent"] in commands


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('averageValue: "16"', 'averageValu: "16"', "'averageValu' was unexpected"),
        ("terminationGracePeriodSeconds: 35", "terminationGracePeriodSeconds: 3x", "3x"),
        ("            grpc:\n              port: 8001\n            periodSeconds: 5",
         "            grpc:\n              port: grpc\n            periodSeconds: 5", "grpc"),
        ("kind: HorizontalPodAutoscaler", "kind: HorizontalPodScaler", "Couldn't find schema"),
    ],
)  # fmt: skip
def test_schema_check_fails_on_a_broken_copy(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = (K8S_DIR / "serving.yaml").read_text()
    assert old in text
    broken = tmp_path / "serving.yaml"
    broken.write_text(text.replace(old, new, 1))
    problems = k8s_problems(broken)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("terminationGracePeriodSeconds: 35", "terminationGracePeriodSeconds: 20",
         "terminationGracePeriodSeconds 20 < preStop 5 s + drain 20 s"),
        ('--grace-s, "20"', '--grace-seconds, "20"', "No such option: --grace-seconds"),
        ("args: [serve, --host, 0.0.0.0,", "args: [serve,", "unreachable from outside"),
        ('                command: ["sleep", "5"]', '                command: ["true"]',
         "no preStop sleep"),
    ],
)  # fmt: skip
def test_consistency_check_fails_on_a_broken_copy(old: str, new: str, expected: str) -> None:
    text = (K8S_DIR / "serving.yaml").read_text()
    assert old in text
    documents = [d for d in yaml.safe_load_all(text.replace(old, new, 1)) if d]
    problems = k8s_consistency_problems(documents)
    assert any(expected in p for p in problems), problems


def test_worker_grace_period_must_outlast_its_stop_deadline() -> None:
    text = (K8S_DIR / "stream-worker.yaml").read_text()
    old = "terminationGracePeriodSeconds: 60"
    assert old in text
    documents = [d for d in yaml.safe_load_all(text.replace(old, old[:-2] + "45")) if d]
    problems = k8s_consistency_problems(documents)
    assert any("own stop deadline" in p for p in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("terminationGracePeriodSeconds: 90", "terminationGracePeriodSeconds: 30",
         "terminationGracePeriodSeconds 30 < the 60 s a cancelled job gets"),
        ('"8004", --metrics-host, 0.0.0.0]', '"8004"]', "cannot be scraped"),
        ("args: [train, agent,", "args: [train, agents,", "No such command 'agents'"),
    ],
)  # fmt: skip
def test_training_agent_checks_fail_on_a_broken_copy(old: str, new: str, expected: str) -> None:
    text = (K8S_DIR / "training-agent.yaml").read_text()
    assert old in text
    documents = [d for d in yaml.safe_load_all(text.replace(old, new, 1)) if d]
    problems = k8s_consistency_problems(documents)
    assert any(expected in p for p in problems), problems


def test_training_agent_schema_check_fails_on_a_broken_copy(tmp_path: Path) -> None:
    text = (K8S_DIR / "training-agent.yaml").read_text()
    old = "            claimName: headrace-runs"
    assert old in text
    broken = tmp_path / "training-agent.yaml"
    broken.write_text(text.replace(old, "            claimNam: headrace-runs", 1))
    problems = k8s_problems(broken)
    assert any("'claimName' is a required property" in p for p in problems), problems
