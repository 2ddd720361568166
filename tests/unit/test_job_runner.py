"""The training agent's job runner without Ray: which events a job's spec and its end give."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from headrace.errors import ConfigError, HeadraceError, JobCancelled
from streams.job_messages import TrainingEvent
from streams.job_runner import JobRunner, JobRunnerConfig
from training.job_spec import parse_job_spec


def _runner(tmp_path: Path, events: list[TrainingEvent]) -> JobRunner:
    def cancelled_training(*_args: Any) -> Any:
        raise JobCancelled("stopped")

    config = JobRunnerConfig(repository=tmp_path / "repo", runs_dir=tmp_path / "runs")
    return JobRunner(config, cancelled_training, events.append, lambda _update: None)


@pytest.mark.parametrize("train", [5, [1, 2], "resnet20"])
def test_a_spec_whose_train_section_is_not_a_mapping_is_rejected_not_raised(
    tmp_path: Path, train: object
) -> None:
    events: list[TrainingEvent] = []
    assert _runner(tmp_path, events).validate("poison", {"train": train}) is None
    [event] = events
    assert (event.job_id, event.event) == ("poison", "rejected")
    assert event.reason is not None and "train" in event.reason
    with pytest.raises(ConfigError, match="train"):  # and the CLI's submit says the same
        parse_job_spec({"train": train, "job_id": "poison"})


def test_a_job_stopped_by_the_agents_stop_gets_no_cancelled_event(tmp_path: Path) -> None:
    spec = parse_job_spec({"model": "lenet5", "epochs": 1, "job_id": "j-1"})
    for interrupted, expected in [(True, ["started"]), (False, ["started", "cancelled"])]:
        events: list[TrainingEvent] = []
        stop, agent_stops = threading.Event(), threading.Event()
        stop.set()
        if interrupted:
            agent_stops.set()
        _runner(tmp_path, events).execute(spec, stop, agent_stops)
        assert [e.event for e in events] == expected


def test_a_job_id_reused_for_another_spec_fails_and_the_same_spec_runs(tmp_path: Path) -> None:
    first = parse_job_spec({"model": "lenet5", "epochs": 1, "job_id": "dup", "name": "m"})
    other = parse_job_spec({"model": "lenet5", "epochs": 2, "job_id": "dup", "name": "m"})
    stop = threading.Event()
    stop.set()
    for spec, expected in [(first, "started"), (other, "failed"), (first, "started")]:
        events: list[TrainingEvent] = []
        _runner(tmp_path, events).execute(spec, stop)
        assert events[0].event == expected, events
    assert events[0].event == "started"
    events = []
    _runner(tmp_path, events).execute(other, stop)
    assert events[0].reason is not None and "already ran with another spec" in events[0].reason


def test_a_json_spec_reads_exponent_numbers_as_numbers() -> None:
    """YAML 1.1 reads JSON's 1e-05 as a string; a JSON spec is read as JSON first."""
    text = (
        '{"kind": "tune", "model": "lenet5", "epochs": 1, "job_id": "j-exp", '
        '"tune": {"tuner": "Random", "trials": 2, '
        '"search_space": {"learning_rate": {"_type": "loguniform", '
        '"_value": [1e-05, 0.01]}}}}'
    )
    spec = parse_job_spec(text)
    assert spec.tune is not None
    assert spec.tune.search_space["learning_rate"]["_value"] == [1e-05, 0.01]


def test_a_malformed_spec_names_its_line() -> None:
    with pytest.raises(ConfigError, match="job spec <spec> is not valid JSON or YAML at line 2"):
        parse_job_spec("model: lenet5\n  epochs: [1\n")


def test_a_ray_address_nothing_answers_at_is_an_error_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `ray.init` retried such an address forever and ignored SIGTERM and Ctrl-C; with
    # RAY_ADDRESS=auto and no cluster it raised a traceback
    from training import ray_jobs

    def init(**_: Any) -> None:
        raise AssertionError("ray.init was called for an address nothing listens at")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends
    monkeypatch.setattr(ray_jobs.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_jobs.ray, "init", init)
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        monkeypatch.setenv("RAY_ADDRESS", address)
        with pytest.raises(HeadraceError, match=f"no Ray cluster answers at RAY_ADDRESS={address}"):
            ray_jobs.connect_ray()

    def no_cluster(**_: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray_jobs.ray, "init", no_cluster)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(HeadraceError, match="cannot join the Ray cluster at RAY_ADDRESS=auto"):
        ray_jobs.connect_ray()


def test_a_ray_address_that_answers_is_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    from training import ray_jobs

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray_jobs.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_jobs.ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray_jobs.ray, "cluster_resources", lambda: {"CPU": 8.0})
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("RAY_ADDRESS", address)
        assert ray_jobs.connect_ray(2) == 8
    assert calls[0]["address"] == address and calls[0]["num_cpus"] is None
