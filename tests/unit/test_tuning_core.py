"""Tuning core: search spaces (NNI format, validated whole), apply_params, the trial objective."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from headrace.errors import ConfigError
from serving.repository import ModelRepository
from training.config import TrainConfig
from training.models import build_model
from training.published import load_published_model
from training.tuning.objective import (
    FIT_FILE,
    TRIAL_FILE,
    load_trial_archive,
    publish_trial,
    run_trial,
)
from training.tuning.search_space import (
    DEFAULT_SEARCH_SPACE,
    apply_params,
    check_search_space,
    load_search_space,
)


def test_default_space_is_returned_as_a_copy_and_is_valid() -> None:
    space = load_search_space(None)
    assert space == DEFAULT_SEARCH_SPACE
    assert set(space) == {
        "learning_rate", "batch_size", "width", "dropout", "weight_decay", "optimizer",
    }  # fmt: skip
    space["width"]["_value"].append(99)
    assert DEFAULT_SEARCH_SPACE["width"]["_value"] == [0.5, 1.0, 2.0]
    assert check_search_space(DEFAULT_SEARCH_SPACE) == DEFAULT_SEARCH_SPACE


def test_a_yaml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "learning_rate: {_type: loguniform, _value: [0.0001, 0.1]}\n"
        "batch_size: {_type: quniform, _value: [16, 64, 16]}\n"
        "patience: {_type: randint, _value: [1, 4]}\n"
    )
    space = load_search_space(path)
    assert space["batch_size"] == {"_type": "quniform", "_value": [16, 64, 16]}


def test_every_problem_of_a_bad_file_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "space.json"
    path.write_text(
        json.dumps(
            {
                "colour": {"_type": "choice", "_value": ["red"]},
                "learning_rate": {"_type": "loguniform", "_value": [0, 0.1]},
                "batch_size": {"_type": "uniform", "_value": [16, 64]},
                "optimizer": {"_type": "choice", "_value": ["adam", "lion"]},
                "dropout": {"_type": "normal", "_value": [0.1, 0.1]},
                "width": {"_type": "uniform", "_value": [0.5, 40]},
                "weight_decay": {"_type": "gamma", "_value": [1, 2]},
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_search_space(path)
    message = caught.value.message
    for expected in (
        "colour: not a tunable parameter",
        "learning_rate: loguniform needs low > 0",
        "batch_size: takes whole numbers",
        "optimizer: value 'lion' is refused",
        "dropout: normal is unbounded",
        "width: value 40 is refused",
        "weight_decay: unknown _type 'gamma'",
    ):
        assert expected in message, message


def test_malformed_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: {_type: [\n")
    with pytest.raises(ConfigError, match="not valid JSON or YAML at line"):
        load_search_space(bad)
    with pytest.raises(ConfigError, match="cannot read search space"):
        load_search_space(tmp_path / "absent.json")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="non-empty mapping"):
        load_search_space(listed)


def test_apply_params_sets_and_validates() -> None:
    base = TrainConfig(epochs=3, seed=7)
    config = apply_params(base, {"learning_rate": 0.01, "batch_size": 32.0, "width": 2.0})
    assert (config.learning_rate, config.batch_size, config.width) == (0.01, 32, 2.0)
    assert (config.epochs, config.seed) == (3, 7) and base.width == 1.0
    with pytest.raises(ConfigError, match="not tunable: epochs"):
        apply_params(base, {"epochs": 5})
    with pytest.raises(ConfigError, match="dropout"):
        apply_params(base, {"dropout": 1.5})


def test_width_and_dropout_change_the_model_but_defaults_keep_it() -> None:
    torch.manual_seed(0)
    classic = build_model("lenet5")
    torch.manual_seed(0)
    default = build_model("lenet5", width=1.0, dropout=0.0)
    assert str(classic) == str(default)
    for (key, a), (key2, b) in zip(
        classic.state_dict().items(), default.state_dict().items(), strict=True
    ):
        assert key == key2 and torch.equal(a, b)
    wide = build_model("lenet5", width=2.0, dropout=0.3)
    assert wide.state_dict().keys() == classic.state_dict().keys()  # dropout adds no names
    assert wide.state_dict()["features.0.weight"].shape[0] == 12
    assert any(isinstance(m, torch.nn.Dropout) for m in wide.modules())
    for name in ("lenet5-wide", "resnet20"):
        narrow = build_model(name, width=0.5, dropout=0.2).eval()
        shape = (2, 3, 32, 32) if name == "resnet20" else (2, 1, 28, 28)
        assert narrow(torch.zeros(shape)).shape == (2, 10)
    with pytest.raises(ConfigError, match="width"):
        build_model("lenet5", width=0)


def test_run_trial_reports_each_epoch_and_stops_when_asked(tmp_path: Path) -> None:
    config = TrainConfig(epochs=5, patience=0, repository=tmp_path / "repo")
    reported: list[tuple[int, float]] = []

    def report(epoch: int, val_loss: float) -> bool:
        reported.append((epoch, val_loss))
        return epoch >= 2

    outcome = run_trial(config, report)
    assert [epoch for epoch, _ in reported] == [1, 2]
    assert outcome.epochs_run == 2 and outcome.stopped_early
    assert outcome.best_val_loss == pytest.approx(min(loss for _, loss in reported))
    assert 0.0 < outcome.best_val_accuracy <= 1.0 and outcome.seconds > 0
    assert not (tmp_path / "repo").exists()  # a trial never publishes


def test_archived_trial_publishes_with_its_architecture(tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, width=0.5, dropout=0.2, learning_rate=0.01)
    archive = tmp_path / "trial"
    outcome = run_trial(config, archive_dir=archive, params={"width": 0.5, "dropout": 0.2})
    assert not outcome.stopped_early
    assert {p.name for p in archive.iterdir()} >= {"weights.pt", TRIAL_FILE, FIT_FILE, "run"}
    assert (archive / "run" / "checkpoint.pt").is_file()
    stored = load_trial_archive(archive)
    assert stored.params == {"width": 0.5, "dropout": 0.2}
    assert stored.outcome.best_val_loss == outcome.best_val_loss

    report = publish_trial(archive, tmp_path / "repo", name="tuned", lineage={"trial_id": "abc"})
    version = ModelRepository(tmp_path / "repo").get("tuned", report.version)
    assert version.metadata.lineage["trial_id"] == "abc"
    assert version.metadata.architecture_options == {"width": 0.5, "dropout": 0.2}
    assert version.metadata.metrics["val_loss"] == pytest.approx(outcome.best_val_loss)
    assert report.test_accuracy == pytest.approx(outcome.test_accuracy)
    model = load_published_model(version)
    assert model.state_dict()["features.0.weight"].shape[0] == 3  # width 0.5 of 6 channels
    with pytest.raises(ConfigError, match="no archived trial"):
        load_trial_archive(tmp_path / "nothing")


def test_quantised_ranges_of_whole_number_fields_need_whole_q_and_bounds() -> None:
    """A fractional q (or bound) on batch_size or patience samples values like 47.5 that every
    trial then fails on: refused up front, every problem listed."""
    with pytest.raises(ConfigError) as caught:
        check_search_space(
            {
                "batch_size": {"_type": "quniform", "_value": [16, 64, 2.5]},
                "patience": {"_type": "qloguniform", "_value": [1.5, 8, 1]},
            }
        )
    message = caught.value.message
    assert "batch_size: takes whole numbers: q must be a whole number, got 2.5" in message
    assert "patience: takes whole numbers: bounds must be whole numbers, got [1.5, 8, 1]" in message
    whole = {"batch_size": {"_type": "quniform", "_value": [16, 64, 4.0]}}
    assert check_search_space(whole) == whole
    fractional_float = {"dropout": {"_type": "quniform", "_value": [0.0, 0.5, 0.05]}}
    assert check_search_space(fractional_float) == fractional_float


def test_a_json_file_with_exponent_numbers_loads(tmp_path: Path) -> None:
    """json.dumps writes 1e-05; PyYAML alone would read it as the string '1e-05'."""
    path = tmp_path / "space.json"
    path.write_text(json.dumps(DEFAULT_SEARCH_SPACE))
    assert "1e-05" in path.read_text()
    assert load_search_space(path) == DEFAULT_SEARCH_SPACE


def test_many_choices_are_checked_without_a_trainconfig_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: every choice was validated as a whole TrainConfig (19 s for 99,000 choices in
    a job spec, the agent's loop blocked meanwhile) and every refused one listed (8.9 MB)."""
    import training.tuning.search_space as search_space

    built: list[dict[str, object]] = []
    real = search_space.apply_params

    def counting(base: TrainConfig, params: dict[str, object]) -> TrainConfig:
        built.append(dict(params))
        return real(base, params)

    monkeypatch.setattr(search_space, "apply_params", counting)
    rates = [1e-5 + i * 1e-6 for i in range(2_000)]
    space = {
        "learning_rate": {"_type": "choice", "_value": rates + rates},
        "optimizer": {"_type": "choice", "_value": ["adam", "sgd", "adam"]},
    }
    assert check_search_space(space) == space
    # the smallest and largest rate, each name once
    assert sorted(map(str, built)) == sorted(
        map(str, [{"learning_rate": 1e-5}, {"learning_rate": rates[-1]}, {"optimizer": "adam"},
                  {"optimizer": "sgd"}])
    )  # fmt: skip
    bad = {"learning_rate": {"_type": "choice", "_value": [-1.0 - i for i in range(2_000)]}}
    with pytest.raises(ConfigError) as caught:
        check_search_space(bad)
    lines = caught.value.message.splitlines()
    assert lines[1].strip() == (
        "learning_rate: value -1.0 is refused: learning_rate: Input should be greater than 0"
    )
    assert lines[-1].strip() == "learning_rate: ... and 1,995 more values refused"
    assert len(lines) == 7
    monkeypatch.setattr(search_space, "apply_params", real)
    rates = [1e-5 + i * 1e-7 for i in range(99_000)]
    many = {"learning_rate": {"_type": "choice", "_value": rates}}
    assert check_search_space(many) == many  # 0.1 s (19 s before)
