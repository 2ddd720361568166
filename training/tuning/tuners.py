"""Tuner and assessor names of `headrace tune`, mapped onto NNI's algorithms.

| headrace | NNI algorithm | needs |
|---|---|---|
| TPE | built-in `TPE` (NNI's own TPE) | - |
| Random | built-in `Random` | - |
| Anneal | built-in `Anneal` (hyperopt's annealing) | hyperopt |
| GP | `training.tuning.gp_tuner.HeadraceGPTuner` (NNI's GP tuner, mended) | scikit-learn |
| BOHB | `training.tuning.bohb.HeadraceBOHB` (NNI's BOHB, mended) | ConfigSpace, statsmodels |

Every package above is a dependency of headrace; `check_available` only guards
against an environment that lost one. BOHB gives each trial a budget, its
epochs (1 to the job's epochs), which the trial reads from its parameters.

Every tuner minimises the trials' final result (best validation loss).
Medianstop compares the per-epoch validation losses; Curvefitting only fits
rising curves, so with it the trials report validation accuracy per epoch
(their final result stays the validation loss). GP only takes numbers: a choice
of names is sent to it as a choice of indices and turned back in the trial.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headrace.errors import ConfigError
from training.tuning.config import TuneConfig

MEDIANSTOP_START_STEP = 2
"""Epochs a trial reports before Medianstop may judge it (`headrace tune` and the benchmark)."""
MEDIANSTOP_MIN_COMPLETED = 3
"""Trials that must finish before Medianstop stops any (`training.tuning.medianstop`)."""
MEDIANSTOP_CLASS = "training.tuning.medianstop.HeadraceMedianstop"


@dataclass(frozen=True)
class Algorithm:
    """How one headrace name becomes an NNI algorithm config."""

    builtin: str | None = None
    class_name: str | None = None  # a custom class importable from the project root
    requires: tuple[str, ...] = ()  # importable modules (pip package names in `packages`)
    packages: tuple[str, ...] = ()
    numeric_choices: bool = False
    advisor: bool = False
    seeded: bool = True
    extra_args: dict[str, Any] = field(default_factory=dict)


TUNERS: dict[str, Algorithm] = {
    "TPE": Algorithm(builtin="TPE"),
    "Random": Algorithm(builtin="Random"),
    "Anneal": Algorithm(
        builtin="Anneal", requires=("hyperopt",), packages=("hyperopt",), seeded=False
    ),
    "GP": Algorithm(
        class_name="training.tuning.gp_tuner.HeadraceGPTuner",
        requires=("sklearn",),
        packages=("scikit-learn",),
        numeric_choices=True,
        # random for 3 trials, then the GP; NNI's defaults (10 random, 100k warm-up samples
        # and 250 L-BFGS starts per suggestion) take ~10 s a suggestion and suit long runs only
        extra_args={
            "cold_start_num": 3,
            "selection_num_warm_up": 5000,
            "selection_num_starting_points": 20,
        },
    ),
    "BOHB": Algorithm(
        class_name="training.tuning.bohb.HeadraceBOHB",
        requires=("ConfigSpace", "statsmodels"),
        packages=("ConfigSpace", "statsmodels"),
        advisor=True,
        seeded=False,
    ),
}


def missing_packages(tuner: str) -> list[str]:
    """The pip packages a tuner needs that this environment lacks."""
    algorithm = TUNERS[tuner]
    return [
        package
        for module, package in zip(algorithm.requires, algorithm.packages, strict=True)
        if importlib.util.find_spec(module) is None
    ]


def check_available(tuner: str) -> None:
    """ConfigError naming the missing packages when a tuner cannot run here."""
    missing = missing_packages(tuner)
    if missing:
        raise ConfigError(
            f"tuner {tuner} needs the Python package(s) {', '.join(missing)}, which are not "
            "installed although headrace depends on them: reinstall headrace (pip install -e .) "
            f"or pip install {' '.join(missing)} (or choose --tuner TPE, Random)"
        )


def nni_search_space(config: TuneConfig) -> dict[str, dict[str, Any]]:
    """The search space as the tuner gets it (choices of names as indices for GP)."""
    space = {key: dict(entry) for key, entry in config.search_space.items()}
    if TUNERS[config.tuner].numeric_choices:
        for entry in space.values():
            values = entry["_value"]
            if entry["_type"] == "choice" and any(isinstance(v, str) for v in values):
                entry["_value"] = list(range(len(values)))
    return space


def decode_params(
    params: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """A tuner's sample as TrainConfig values: indices back to names, numpy scalars to Python."""
    decoded: dict[str, Any] = {}
    for key, value in params.items():
        if hasattr(value, "item"):  # numpy scalar
            value = value.item()
        entry = space.get(key)
        if (
            entry is not None
            and entry["_type"] == "choice"
            and any(isinstance(v, str) for v in entry["_value"])
            and isinstance(value, int)
            and not isinstance(value, bool)
            and 0 <= value < len(entry["_value"])
        ):
            value = entry["_value"][value]
        decoded[key] = value
    return decoded


def tpe_startup_jobs(trials: int) -> int:
    """TPE's random start-up trials (n_startup_jobs) for a trial budget: a third of it, 2 to 20.

    NNI's default of 20 would leave a 10-trial search purely random.
    """
    return max(2, min(20, trials // 3))


def _class_args(algorithm: Algorithm, config: TuneConfig) -> dict[str, Any]:
    args: dict[str, Any] = {"optimize_mode": "minimize", **algorithm.extra_args}
    if algorithm.seeded:
        args["seed"] = config.train.seed
    if algorithm.builtin == "TPE":
        args["tpe_args"] = {"n_startup_jobs": tpe_startup_jobs(config.trials)}
    if algorithm.advisor:  # BOHB: the budget of a trial is its epochs
        args.update(min_budget=1, max_budget=config.train.epochs, eta=3)
    return args


def algorithm_configs(config: TuneConfig, project_root: Path) -> dict[str, dict[str, Any]]:
    """`tuner`/`advisor` and `assessor` sections of the NNI experiment config, as dicts."""
    check_available(config.tuner)
    algorithm = TUNERS[config.tuner]
    section: dict[str, Any] = {"class_args": _class_args(algorithm, config)}
    if algorithm.class_name is not None:
        section.update(class_name=algorithm.class_name, code_directory=str(project_root))
    else:
        section["name"] = algorithm.builtin
    sections = {"advisor" if algorithm.advisor else "tuner": section}
    if config.assessor == "Medianstop":
        sections["assessor"] = {
            "class_name": MEDIANSTOP_CLASS,
            "code_directory": str(project_root),
            "class_args": medianstop_args(),
        }
    elif config.assessor == "Curvefitting":
        sections["assessor"] = {
            "name": "Curvefitting",
            "class_args": {"epoch_num": config.train.epochs, "start_step": 2, "threshold": 0.9},
        }
    return sections


def medianstop_args() -> dict[str, Any]:
    """Class arguments of `HeadraceMedianstop` as `headrace tune` and the benchmark use it."""
    return {
        "optimize_mode": "minimize",
        "start_step": MEDIANSTOP_START_STEP,
        "min_completed": MEDIANSTOP_MIN_COMPLETED,
    }


def intermediate_metric(config: TuneConfig) -> str:
    """The per-epoch `default` metric: val_loss, or val_accuracy for Curvefitting."""
    return "val_accuracy" if config.assessor == "Curvefitting" else "val_loss"
