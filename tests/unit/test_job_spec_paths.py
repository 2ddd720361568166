"""Paths a job spec names (dataset folder, shards root, watermark key) are read by the training
agent: each must lie inside the agent's data folders, or the job is rejected before it runs."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from streams.job_agent import JobAgent, JobAgentConfig
from streams.job_messages import TrainingEvent
from streams.job_runner import JobRunner, JobRunnerConfig
from training.job_spec import AGENT_OWNED, SPEC_PATHS, TrainingJobSpec


def _runner(tmp_path: Path, events: list[TrainingEvent]) -> JobRunner:
    config = JobRunnerConfig(
        repository=tmp_path / "repo",
        runs_dir=tmp_path / "runs",
        data_root=tmp_path / "data",
        data_dir=tmp_path / "datasets",
    )
    return JobRunner(config, lambda *_a: None, events.append, lambda _u: None)  # type: ignore[arg-type]


def _outside(tmp_path: Path, case: str) -> tuple[dict[str, Any], str, str]:
    """(spec, field, the path it gives) of `case`."""
    secret = tmp_path / "private"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to(secret, target_is_directory=True)
    data_dirs = {
        "data_dir": str(secret),
        "data_dir climbing out": f"{tmp_path}/datasets/../private",
        "data_dir through a symlink": f"{tmp_path}/data/link",
        "data_dir under ~": "~/private",
    }
    if case in data_dirs:
        return {"dataset": "mnist", "data_dir": data_dirs[case]}, "data_dir", data_dirs[case]
    if case == "shards root":
        return {"data_source": {"root": str(secret)}}, "data_source.root", str(secret)
    return {"watermark": {"key_file": "/dev/zero"}}, "watermark.key_file", "/dev/zero"


CASES = [
    "data_dir",
    "data_dir climbing out",
    "data_dir through a symlink",
    "data_dir under ~",
    "shards root",
    "watermark key",
]


@pytest.mark.parametrize("case", CASES)
def test_a_spec_naming_a_path_outside_the_agents_data_folders_is_rejected(
    tmp_path: Path, case: str
) -> None:
    """Before: accepted; the agent read the folder (training on it, publishing the model, or
    saying in the `failed` event what the folder held) or, for a key, read /dev/zero for ever."""
    events: list[TrainingEvent] = []
    spec, field, given = _outside(tmp_path, case)
    assert _runner(tmp_path, events).validate("j", spec) is None
    [event] = events
    assert event.event == "rejected"
    assert event.reason is not None
    assert f"{field}: {given!r} is outside the training agent's data folders" in event.reason
    assert str(tmp_path) not in event.reason.replace(given, "")  # nor its folders, link targets


def test_paths_inside_the_agents_data_folders_are_read_as_checked(tmp_path: Path) -> None:
    events: list[TrainingEvent] = []
    runner = _runner(tmp_path, events)
    key = tmp_path / "datasets" / "keys" / "k.json"
    spec = runner.validate(
        "j",
        {
            "dataset": "mnist",
            "data_dir": f"{tmp_path}/datasets/x/../mnist",
            "watermark": {"key_file": str(key)},
        },
    )
    shards = runner.validate("s", {"data_source": {"kind": "shards", "root": f"{tmp_path}/data"}})
    assert spec is not None and shards is not None, events
    config = runner.train_config(spec)
    assert config.data_dir == tmp_path.resolve() / "datasets" / "mnist"
    assert config.watermark is not None and config.watermark.key_file == key.resolve()
    source = runner.train_config(shards).data_source
    assert source is not None and source.root == (tmp_path / "data").resolve()


def test_the_agent_gives_its_runner_both_data_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kafka.KafkaProducer", lambda **_c: None)
    monkeypatch.setattr("kafka.KafkaConsumer", lambda *_t, **_c: None)
    config = JobAgentConfig(
        bootstrap="unused:9092",
        repository=tmp_path,
        runs_dir=tmp_path,
        data_root=tmp_path / "data",
        data_dir=tmp_path / "datasets",
    )
    agent = JobAgent(config, train=lambda *_a: None, available_cpus=1)
    assert agent.runner.config.data_folders == [tmp_path / "data", tmp_path / "datasets"]


def _path_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    found = set()
    for name, field in model.model_fields.items():
        for kind in typing.get_args(field.annotation) or (field.annotation,):
            if kind is Path:
                found.add(prefix + name)
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                found |= _path_fields(kind, f"{prefix}{name}.")
    return found


def test_every_path_a_spec_can_name_is_checked() -> None:
    """A path field added to TrainConfig (or a section of it) must join SPEC_PATHS."""
    named = _path_fields(TrainingJobSpec)
    assert {f"train.{field}" for field in AGENT_OWNED} & named  # the walk finds paths
    assert named - {f"train.{field}" for field in AGENT_OWNED} == {
        f"train.{path}" for path in SPEC_PATHS
    }
