"""Tuner/assessor mapping onto NNI, the mended GP tuner, tuning settings and best-trial choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from headrace.errors import ConfigError
from training.config import TrainConfig
from training.tuning.config import TuneConfig
from training.tuning.gp_tuner import HeadraceGPTuner
from training.tuning.objective import TrialArchive, TrialOutcome
from training.tuning.runner import best_trial, prepare
from training.tuning.search_space import DEFAULT_SEARCH_SPACE, apply_params
from training.tuning.tuners import (
    TUNERS,
    algorithm_configs,
    decode_params,
    intermediate_metric,
    missing_packages,
    nni_search_space,
)


def test_builtin_tuners_minimise_with_a_seed_and_assessors_get_their_args(tmp_path: Path) -> None:
    config = TuneConfig(train=TrainConfig(epochs=4, seed=3), tuner="TPE", assessor="Medianstop")
    sections = algorithm_configs(config, tmp_path)
    assert sections["tuner"] == {
        "name": "TPE",
        "class_args": {
            "optimize_mode": "minimize", "seed": 3, "tpe_args": {"n_startup_jobs": 3},
        },  # 10 trials: 3 random start-up trials (tpe_startup_jobs)
    }  # fmt: skip
    assert sections["assessor"]["class_args"]["optimize_mode"] == "minimize"
    assert intermediate_metric(config) == "val_loss"
    curve = TuneConfig(train=TrainConfig(epochs=4), tuner="Random", assessor="Curvefitting")
    sections = algorithm_configs(curve, tmp_path)
    assert sections["assessor"]["class_args"]["epoch_num"] == 4
    assert intermediate_metric(curve) == "val_accuracy"  # Curvefitting fits rising curves


def test_gp_is_our_mended_class_and_gets_choices_of_names_as_indices(tmp_path: Path) -> None:
    config = TuneConfig(tuner="GP")
    section = algorithm_configs(config, tmp_path)["tuner"]
    assert section["class_name"] == "training.tuning.gp_tuner.HeadraceGPTuner"
    assert section["code_directory"] == str(tmp_path)
    space = nni_search_space(config)
    assert space["optimizer"]["_value"] == [0, 1]
    assert config.search_space["optimizer"]["_value"] == ["adam", "sgd"]  # left alone
    assert nni_search_space(TuneConfig(tuner="TPE"))["optimizer"]["_value"] == ["adam", "sgd"]


def test_decode_params_turns_indices_and_numpy_back() -> None:
    np = pytest.importorskip("numpy")
    decoded = decode_params(
        {"optimizer": 1, "learning_rate": np.float64(0.01), "batch_size": np.int64(32)},
        DEFAULT_SEARCH_SPACE,
    )
    assert decoded == {"optimizer": "sgd", "learning_rate": 0.01, "batch_size": 32}
    assert type(decoded["learning_rate"]) is float and type(decoded["batch_size"]) is int
    assert decode_params({"optimizer": "adam"}, DEFAULT_SEARCH_SPACE) == {"optimizer": "adam"}


def test_mended_gp_tuner_keeps_suggesting_after_its_cold_start() -> None:
    """NNI 3.0's own GPTuner fails here after the cold start (SciPy's 1-D x0 rule)."""
    tuner = HeadraceGPTuner(optimize_mode="minimize", **TUNERS["GP"].extra_args)
    space = nni_search_space(TuneConfig(tuner="GP"))
    tuner.update_search_space(space)
    for parameter_id in range(5):
        raw = tuner.generate_parameters(parameter_id)
        params = decode_params(raw, DEFAULT_SEARCH_SPACE)
        config = apply_params(TrainConfig(), params)  # every suggestion is a valid config
        tuner.receive_trial_result(parameter_id, raw, config.learning_rate)


def test_every_tuner_can_run_here_and_a_lost_package_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    assert {tuner: missing_packages(tuner) for tuner in TUNERS} == dict.fromkeys(TUNERS, [])
    monkeypatch.setitem(sys.modules, "hyperopt", None)  # `import hyperopt` now fails
    assert missing_packages("Anneal") == ["hyperopt"]
    with pytest.raises(ConfigError, match="tuner Anneal needs .*hyperopt.*reinstall headrace"):
        algorithm_configs(TuneConfig(tuner="Anneal"), tmp_path)


def test_bohb_is_our_mended_advisor_with_epochs_as_its_budget(tmp_path: Path) -> None:
    config = TuneConfig(tuner="BOHB", train=TrainConfig(epochs=9))
    section = algorithm_configs(config, tmp_path)["advisor"]
    assert section["class_name"] == "training.tuning.bohb.HeadraceBOHB"
    assert section["class_args"] == {
        "optimize_mode": "minimize", "min_budget": 1, "max_budget": 9, "eta": 3,
    }  # fmt: skip
    assert algorithm_configs(TuneConfig(tuner="Anneal"), tmp_path)["tuner"] == {
        "name": "Anneal", "class_args": {"optimize_mode": "minimize"},
    }  # fmt: skip


def test_tune_config_refuses_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="concurrency 3 exceeds trials 2"):
        TuneConfig(trials=2, concurrency=3)
    with pytest.raises(ValueError, match="not a tunable parameter"):
        TuneConfig(search_space={"epochs": {"_type": "choice", "_value": [1]}})


def test_prepare_writes_absolute_settings_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = TuneConfig(train=TrainConfig(repository=Path("repo")), experiment_dir=Path("tune"))
    stored, experiment_id = prepare(config, "exp1")
    assert stored.train.repository == tmp_path / "repo"
    assert stored.experiment_dir == tmp_path / "tune"
    assert (tmp_path / "tune" / "exp1" / "headrace-tune.json").is_file()
    with pytest.raises(Exception, match="already exists.*--resume exp1"):
        prepare(config, "exp1")


def test_best_trial_is_the_lowest_archived_val_loss(tmp_path: Path) -> None:
    for trial_id, loss in (("a", 0.5), ("b", 0.2), ("c", 0.2)):
        folder = tmp_path / "trials" / trial_id
        folder.mkdir(parents=True)
        outcome = TrialOutcome(
            best_val_loss=loss, best_val_accuracy=0.9, epochs_run=1, stopped_early=False, seconds=1
        )
        archive = TrialArchive(outcome=outcome, config=TrainConfig(), params={"x": loss})
        (folder / "trial.json").write_text(archive.model_dump_json())
    chosen = best_trial(tmp_path, ["a", "b", "c", "killed"])
    assert chosen is not None and chosen[0] == "b"  # ties: the earliest
    assert best_trial(tmp_path, ["killed"]) is None


def test_no_finished_trial_is_a_clear_error_quoting_the_trial(tmp_path: Path) -> None:
    from headrace.errors import TuningError
    from training.tuning.nni_experiment import TrialInfo
    from training.tuning.runner import TRIAL_OUTPUT, publish_best

    config = TuneConfig(experiment_dir=tmp_path)
    output = tmp_path / "exp" / TRIAL_OUTPUT / "t1"
    output.mkdir(parents=True)
    (output / "trial.stderr").write_text("loading\nerror: dataset folder /x has no MNIST files\n\n")
    trials = [TrialInfo(trial_id="t1", sequence=0, status="FAILED")]
    with pytest.raises(TuningError) as caught:
        publish_best(config, "exp", trials)
    message = caught.value.message
    assert "no trial of experiment exp finished (1 trials: FAILED)" in message
    assert "Trial t1 said: error: dataset folder /x has no MNIST files." in message
    assert not (tmp_path / "model_repository").exists()


def test_the_example_tuning_job_spec_parses() -> None:
    from training.job_spec import parse_job_spec

    path = Path(__file__).resolve().parents[2] / "examples" / "jobs" / "lenet5-digits-tune.yaml"
    spec = parse_job_spec(path.read_text(), available_cpus=2, source=path.name)
    assert spec.kind == "tune" and spec.tune is not None
    assert (spec.tune.tuner, spec.tune.trials, spec.train.epochs) == ("TPE", 6, 3)
    with pytest.raises(ConfigError) as caught:
        parse_job_spec(path.read_text(), available_cpus=1)
    assert "tune.concurrency: 2 trials at once need 2 CPUs but only 1" in caught.value.message
    with pytest.raises(ConfigError, match="a tune: section needs kind: tune"):
        parse_job_spec({"model": "lenet5", "tune": {"trials": 2}})
    with pytest.raises(ConfigError, match="tune.trials"):
        parse_job_spec({"kind": "tune", "tune": {"trials": 0}})
