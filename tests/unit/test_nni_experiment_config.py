"""The experiment config `headrace tune` posts to NNI's manager, and TPE's start-up budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainConfig
from training.tuning.config import TuneConfig
from training.tuning.nni_experiment import _experiment_config, project_root
from training.tuning.tuners import (
    MEDIANSTOP_CLASS,
    algorithm_configs,
    medianstop_args,
    tpe_startup_jobs,
)


def test_posted_config_asks_nni_to_send_stopped_trials_to_the_tuner(tmp_path: Path) -> None:
    """NNI's launcher posts `config.canonical_copy().json()`; its manager starts the dispatcher
    with NNI_INCLUDE_INTERMEDIATE_RESULTS from `deprecated.includeIntermediateResults`."""
    config = TuneConfig(assessor="Medianstop", trials=6, experiment_dir=tmp_path)
    posted = _experiment_config(config, "exp", tmp_path / "tune.json").canonical_copy().json()
    assert posted["deprecated"] == {"includeIntermediateResults": True}
    assert posted["assessor"]["className"] == MEDIANSTOP_CLASS
    assert posted["assessor"]["classArgs"] == medianstop_args()
    assert Path(posted["assessor"]["codeDirectory"]) == project_root()
    assert posted["tuner"]["classArgs"]["tpe_args"] == {"n_startup_jobs": 2}
    assert posted["maxTrialNumber"] == 6
    # Curvefitting's per-epoch result is an accuracy: never a final result for a minimiser
    curve = TuneConfig(assessor="Curvefitting", experiment_dir=tmp_path)
    assert "deprecated" not in _experiment_config(curve, "exp", tmp_path).canonical_copy().json()


@pytest.mark.parametrize(
    ("trials", "startup"), [(1, 2), (6, 2), (10, 3), (30, 10), (60, 20), (500, 20)]
)
def test_tpe_startup_scales_with_the_trial_budget(trials: int, startup: int) -> None:
    assert tpe_startup_jobs(trials) == startup


def test_only_tpe_gets_a_startup_budget(tmp_path: Path) -> None:
    tpe = algorithm_configs(TuneConfig(tuner="TPE", trials=30), tmp_path)["tuner"]
    assert tpe["class_args"]["tpe_args"] == {"n_startup_jobs": 10}
    random = algorithm_configs(TuneConfig(tuner="Random", trials=30), tmp_path)["tuner"]
    assert "tpe_args" not in random["class_args"]
    assert TrainConfig().seed == tpe["class_args"]["seed"]
