"""Every `--tuner` name built as NNI's dispatcher builds it, in-process, suggesting trials.

Each tuner is created from the NNI config section `algorithm_configs` writes,
through NNI's own factory (as `python -m nni` does in the dispatcher process),
given the default search space and asked for trials; every suggestion must be
a valid `TrainConfig`. BOHB is an advisor that talks to NNI's manager by
commands: it gets the commands NNI's manager sends and its answers are read
off its command channel (a recorder in place of the websocket), nothing else.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import nni
import numpy as np
import pytest
from nni.runtime import msg_dispatcher_base
from nni.tools.package_utils.tuner_factory import (
    create_builtin_class_instance,
    create_customized_class_instance,
)

from training.config import TrainConfig
from training.tuning.bohb import HeadraceBOHB
from training.tuning.config import TuneConfig, TunerName
from training.tuning.nni_trial import BUDGET_KEY, budget_epochs
from training.tuning.search_space import DEFAULT_SEARCH_SPACE, apply_params
from training.tuning.tuners import TUNERS, algorithm_configs, decode_params, nni_search_space

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # ConfigSpace 1.x on NNI's calls
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # statsmodels' KDE on its random state
    pytest.mark.filterwarnings("ignore:json-tricks:UserWarning"),  # NNI dumping numpy scalars
]


class _Channel:
    """Stands for the websocket to NNI's manager: keeps what the advisor sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def _send(self, command: Any, data: str) -> None:
        self.sent.append((command.name, data))

    def take(self, name: str) -> list[Any]:
        found = [nni.load(data) if data else data for command, data in self.sent if command == name]
        self.sent = [(command, data) for command, data in self.sent if command != name]
        return found


@pytest.fixture
def unit_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Advisors built now do not connect to a manager (NNI's own unit-test channel URL)."""
    env = msg_dispatcher_base.dispatcher_env_vars
    fields = {**env._asdict(), "NNI_TUNER_COMMAND_CHANNEL": "ws://_unittest_"}
    replaced = collections.namedtuple("EnvVars", env._fields)(**fields)
    monkeypatch.setattr(msg_dispatcher_base, "dispatcher_env_vars", replaced)


def _build(config: TuneConfig, project_root: Path) -> Any:
    """The algorithm as NNI's dispatcher creates it from the experiment config."""
    sections = algorithm_configs(config, project_root)
    section = sections.get("tuner") or sections["advisor"]
    if "name" in section:
        return create_builtin_class_instance(section["name"], section["class_args"], "tuners")
    return create_customized_class_instance(
        {
            "codeDirectory": section["code_directory"],
            "className": section["class_name"],
            "classArgs": section["class_args"],
        }
    )


def _as_config(raw: dict[str, Any], config: TuneConfig) -> TrainConfig:
    params = decode_params(raw, config.search_space)
    budget = params.pop(BUDGET_KEY, None)
    assert set(params) == set(DEFAULT_SEARCH_SPACE)
    trained = apply_params(config.train, params)
    if budget is not None:
        trained = trained.model_copy(update={"epochs": budget_epochs(budget, config.train.epochs)})
    return trained


def _loss(config: TrainConfig) -> float:
    """A made-up result that prefers learning rates near 1e-2 (any number would do)."""
    return abs(config.learning_rate - 1e-2) + config.dropout


@pytest.mark.parametrize("tuner", list(TUNERS))
def test_each_tuner_is_built_by_nni_and_suggests_valid_trials(
    tuner: TunerName, unit_channel: None
) -> None:
    config = TuneConfig(tuner=tuner, train=TrainConfig(epochs=3, seed=1))
    np.random.seed(1)
    project_root = Path(__file__).resolve().parents[2]
    algorithm = _build(config, project_root)
    space = nni_search_space(config)
    suggested: list[TrainConfig] = []
    if not TUNERS[tuner].advisor:
        algorithm.update_search_space(space)
        for parameter_id in range(5):
            raw = algorithm.generate_parameters(parameter_id)
            suggested.append(_as_config(raw, config))
            algorithm.receive_trial_result(parameter_id, raw, _loss(suggested[-1]))
    else:
        assert isinstance(algorithm, HeadraceBOHB)
        channel = _Channel()
        algorithm._channel = channel
        algorithm.handle_initialize(space)
        assert channel.take("Initialized") == [""]
        algorithm.handle_request_trial_jobs(2)  # as NNI's manager does: two trials at once
        pending = channel.take("NewTrialJob")
        for number in range(8):
            job = pending.pop(0)
            suggested.append(_as_config(job["parameters"], config))
            metric = {"default": _loss(suggested[-1])}
            trial_id = f"trial{number}"
            algorithm.handle_report_metric_data(
                {
                    "parameter_id": job["parameter_id"],
                    "trial_job_id": trial_id,
                    "type": "FINAL",
                    "sequence": 0,
                    "value": nni.dump(metric),
                }
            )  # NNI 3.0's own BOHB raised TypeError here (string parameter ids)
            ended = {"trial_job_id": trial_id, "event": "SUCCEEDED", "hyper_params": nni.dump(job)}
            algorithm.handle_trial_end(ended)
            algorithm.handle_request_trial_jobs(1)  # the freed slot asks for the next trial
            pending += channel.take("NewTrialJob")
        assert {c.epochs for c in suggested} == {1, 3}  # budgets 1 and 3 (eta 3, up to --epochs)
        first_round = {c.learning_rate for c in suggested if c.epochs == 1}
        assert any(c.learning_rate in first_round for c in suggested if c.epochs == 3)  # promoted
    assert len({c.learning_rate for c in suggested}) >= 5  # really sampled


def _gp_suggestions(seed: int, project_root: Path) -> list[TrainConfig]:
    config = TuneConfig(tuner="GP", train=TrainConfig(epochs=3, seed=seed))
    tuner = _build(config, project_root)
    tuner.update_search_space(nni_search_space(config))
    suggested: list[TrainConfig] = []
    for parameter_id in range(5):  # 3 random cold-start trials, then the GP's own picks
        raw = tuner.generate_parameters(parameter_id)
        suggested.append(_as_config(raw, config))
        tuner.receive_trial_result(parameter_id, raw, _loss(suggested[-1]))
    return suggested


def test_gp_tuner_follows_the_job_seed(unit_channel: None) -> None:
    """NNI's GP tuner seeds itself from the OS; ours takes the job's seed as TPE does."""
    project_root = Path(__file__).resolve().parents[2]
    first, again = _gp_suggestions(3, project_root), _gp_suggestions(3, project_root)
    other = _gp_suggestions(4, project_root)
    assert first == again
    assert [c.learning_rate for c in first] != [c.learning_rate for c in other]


def test_bohb_falls_back_to_a_random_configuration_once_its_model_exists(
    unit_channel: None,
) -> None:
    """No drawn candidate (num_samples=0) makes the KDE pick fall back to a random sample,
    which NNI 3.0's own generator returns as a dict and then fails on."""
    from nni.algorithms.hpo.bohb_advisor import BOHB

    args = {"optimize_mode": "minimize", "min_budget": 1, "max_budget": 1}
    args |= {"num_samples": 0, "random_fraction": 0.0}
    for cls in (BOHB, HeadraceBOHB):
        advisor = cls(**args)
        advisor._channel = _Channel()
        advisor.handle_initialize(dict(DEFAULT_SEARCH_SPACE))
        for number in range(14):  # 2 x (6 parameters + 1) results: the first KDE model
            sample = dict(advisor.search_space.sample_configuration())
            advisor.cg.new_result(loss=float(number), budget=1, parameters=sample)
        assert advisor.cg.kde_models
        if cls is BOHB:
            with pytest.raises(AttributeError, match="get_dictionary"):
                advisor.cg.get_config(1)
        else:
            raw = advisor.cg.get_config(1)
            config = TuneConfig(tuner="BOHB", train=TrainConfig(epochs=1))
            assert _as_config(raw, config).epochs == 1


def test_budget_is_whole_epochs_within_the_job() -> None:
    assert budget_epochs(1, 5) == 1 and budget_epochs(3.0, 5) == 3 and budget_epochs(2.6, 5) == 3
    assert budget_epochs(0.2, 5) == 1 and budget_epochs(9, 5) == 5
    with pytest.raises(Exception, match="not a number of epochs"):
        budget_epochs("lots", 5)
