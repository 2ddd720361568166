"""Differentially private training: config checks, refusals, a DP fit, empty batches, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError

from headrace.cli import cli
from headrace.commands.options import build_config
from headrace.errors import CheckpointError, ConfigError
from security.privacy import PrivacyConfig, check_distributed_privacy
from security.privacy.engine import PrivateTraining
from serving.repository import ModelRepository
from streams.job_messages import TrainingEvent
from streams.job_runner import JobRunner, JobRunnerConfig
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.datasets import DatasetSplits, load_splits, train_split_size
from training.job_spec import parse_job_spec
from training.loop import Trainer
from training.models import build_model
from training.preprocess import BatchPipeline
from training.privacy import DP_DEFAULTS, PrivacyHook
from training.published import load_published_model
from training.recipe import run_training


def _config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "dataset": "digits",
        "epochs": 2,
        "batch_size": 128,  # 12 Poisson batches per epoch of the 1,455 digits
        "repository": tmp_path / "repo",
        "runs_dir": tmp_path / "runs",
        "run_id": "dp",
        "progress": False,
        # RDP: its noise search takes a third of PRV's time (PRV, the default, runs in
        # the fit and CLI tests)
        "privacy": {"target_epsilon": 3.0, "accountant": "rdp"},
    }
    values.update(overrides)
    return TrainConfig(**values)


# -- configuration ---------------------------------------------------------------------------


def test_privacy_config_reports_every_field_problem_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        PrivacyConfig(
            target_epsilon=0,
            target_delta=1.5,
            max_grad_norm=-1,
            accountant="gdp",  # type: ignore[arg-type]
            noise=1.0,  # type: ignore[call-arg]
        )
    fields = {error["loc"][0] for error in info.value.errors()}
    assert fields == {"target_epsilon", "target_delta", "max_grad_norm", "accountant", "noise"}
    defaults = PrivacyConfig(target_epsilon=3)
    assert (defaults.target_delta, defaults.max_grad_norm, defaults.accountant) == (
        1e-5,
        1.0,
        "prv",
    )


def test_privacy_refusals_come_together_in_one_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(
            TrainConfig,
            model="resnet20",
            preprocess={"balance": "sampler", "normalize": True},
            adversarial={"method": "fgsm"},
            distributed={"workers": 2},
            privacy={"target_epsilon": 3.0},
        )
    message = info.value.message
    for expected in (
        "BatchNorm",
        "balance 'sampler'",
        "Poisson",
        "--no-normalize",
        "adversarial",
        "one process, not 2 workers",
    ):
        assert expected in message, expected
    with pytest.raises(ConfigError, match="balance 'loss'"):
        build_config(TrainConfig, preprocess={"balance": "loss"}, privacy={"target_epsilon": 3})


def test_dp_defaults_fill_only_what_is_unset() -> None:
    private = TrainConfig(privacy=PrivacyConfig(target_epsilon=3.0))
    for key, value in DP_DEFAULTS.items():
        assert getattr(private, key) == value
    assert not private.preprocess.normalize and not private.preprocess.augment.enabled
    values: dict[str, Any] = {
        "privacy": {"target_epsilon": 3.0},  # as a job spec gives it
        "batch_size": 128,
        "preprocess": {"augment": {"enabled": True}},
    }
    chosen = TrainConfig(**values)
    assert chosen.batch_size == 128 and chosen.preprocess.augment.enabled
    assert chosen.learning_rate == DP_DEFAULTS["learning_rate"]
    plain = TrainConfig()
    assert plain.batch_size == 64 and plain.optimizer == "adam" and plain.preprocess.normalize


def test_distributed_statement() -> None:
    check_distributed_privacy(1, "allreduce")
    check_distributed_privacy(1, "parameter_server")
    for strategy in ("allreduce", "parameter_server", "hybrid"):
        with pytest.raises(ConfigError, match="workers to 1"):
            check_distributed_privacy(4, strategy)
    assert "Supported" in (check_distributed_privacy.__doc__ or "")


def test_cli_flags_build_the_privacy_section(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--dp-delta", "1e-6"])
    assert isinstance(result.exception, ConfigError)
    assert "--dp-delta only applies with --dp-epsilon" in result.exception.message
    result = runner.invoke(cli, ["train", "--dp-epsilon", "3", "--normalize"])
    assert isinstance(result.exception, ConfigError) and "--no-normalize" in str(result.exception)
    args = [
        "train", "--dp-epsilon", "5", "--dp-delta", "1e-6", "--max-grad-norm", "0.5",
        "--epochs", "1", "--batch-size", "256", "--runs-dir", str(tmp_path / "runs"),
        "--run-id", "cli", "--no-publish", "--json",
    ]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 < report["dp_epsilon"] <= 5 and report["dp_delta"] == 1e-6
    saved = load_checkpoint(tmp_path / "runs" / "lenet5-digits-cli")
    state = saved["hooks"]["PrivacyHook"]
    assert state["accountant"] == "prv" and state["history"][0][2] > 0


# -- training --------------------------------------------------------------------------------


def test_dp_fit_spends_at_most_the_target_and_publishes_the_plain_model(tmp_path: Path) -> None:
    report = run_training(
        _config(tmp_path, epochs=3, patience=0, privacy={"target_epsilon": 3.0})  # PRV
    )
    assert report.dp_epsilon is not None and 0 < report.dp_epsilon <= 3.0
    assert report.dp_delta == 1e-5
    assert report.test_accuracy > 0.3  # learns something; 10 classes
    version = ModelRepository(tmp_path / "repo").get("lenet5-digits", report.version)
    meta = version.metadata
    assert meta.dp_epsilon == report.dp_epsilon and meta.dp_delta == 1e-5
    assert meta.lineage["dp_sampling"] == "poisson" and meta.metrics["dp_steps"] == 36
    model = load_published_model(version)  # weights.pt of the plain LeNet-5, no wrapper keys
    assert all(not key.startswith("_module") for key in model.state_dict())


def test_early_stopping_spends_less(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=6, patience=1)
    splits = load_splits("digits", seed=0)
    hook = PrivacyHook(config.privacy)  # type: ignore[arg-type]
    trainer = _trainer(config, splits, hook, tmp_path / "run")
    trainer.best_val_loss = -1.0  # no epoch beats it: stops after one epoch
    result = trainer.fit()
    assert result.stopped_early and result.epochs_run == 1
    spent = hook.private.spent()
    assert spent.steps == round(1 / spent.sample_rate)
    assert 0 < spent.epsilon < 0.6 * 3.0  # measured 1.53 with RDP
    assert not any(m._forward_hooks for m in trainer.model.modules())  # detached


def _trainer(
    config: TrainConfig, splits: DatasetSplits, hook: PrivacyHook, run_dir: Path
) -> Trainer:
    pipeline = BatchPipeline(
        config.preprocess, "digits", splits.train.images, splits.train.labels, 10, config.seed
    )
    return Trainer(build_model("lenet5"), splits, pipeline, config, run_dir, [hook])


def test_empty_poisson_batches_are_noise_only_steps(tmp_path: Path) -> None:
    # An expected batch of 1 sample: about a third of the batches are empty.
    splits = load_splits("digits", seed=0)
    keep = np.arange(40)
    small = DatasetSplits(
        splits.name, splits.classes, splits.train.subset(keep), splits.val, splits.test
    )
    privacy = {"target_epsilon": 8, "accountant": "rdp"}
    config = _config(tmp_path, epochs=2, batch_size=1, privacy=privacy)
    hook = PrivacyHook(config.privacy)  # type: ignore[arg-type]
    trainer = _trainer(config, small, hook, tmp_path / "run")
    sizes = [len(batch) for batch in hook.epoch_batches()]
    assert len(sizes) == 40 and 0 in sizes
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit()
    assert np.isfinite(result.history[-1].train_loss)
    assert hook.private.steps == 80  # every batch, empty or not, is one accounted step
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_engine_refuses_batchnorm() -> None:
    model = build_model("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="BatchNorm"):
        PrivateTraining(
            model,
            optimizer,
            train_size=100,
            batch_size=10,
            epochs=1,
            config=PrivacyConfig(target_epsilon=3),
        )


def test_delta_must_be_below_one_over_n(tmp_path: Path) -> None:
    """Checked with the config when the training-set size is known before loading (the
    embedded digits: 1,455 training images), else by the hook on the loaded split."""
    assert train_split_size("digits", 0.1, 0.1) == len(load_splits("digits").train) == 1455
    other = load_splits("digits", None, 0, 0.3, 0.2)
    assert train_split_size("digits", 0.3, 0.2) == len(other.train)
    assert train_split_size("mnist", 0.1, 0.1) is None  # read from files: known once read
    with pytest.raises(ValidationError, match=r"not below 1 / 1455 .*lower --dp-delta"):
        _config(tmp_path, privacy={"target_epsilon": 3, "target_delta": 0.01})
    _config(tmp_path, privacy={"target_epsilon": 3, "target_delta": 0.9 / 1455})
    splits = load_splits("digits", seed=0)
    small = DatasetSplits(
        splits.name, splits.classes, splits.train.subset(np.arange(40)), splits.val, splits.test
    )  # as a folder of 40 images would give: the size is known only once loaded
    hook = PrivacyHook(PrivacyConfig(target_epsilon=3, target_delta=0.05))
    with pytest.raises(ConfigError, match="not below 1 / 40 .*lower --dp-delta"):
        _trainer(_config(tmp_path), small, hook, tmp_path / "run")
    default = TrainConfig(privacy=PrivacyConfig(target_epsilon=3)).privacy
    assert default is not None and default.accountant == "prv"


def test_a_job_spec_whose_delta_is_too_large_is_rejected_at_validation(
    tmp_path: Path,
) -> None:
    """Before: accepted by `train submit` and the agent, refused only once training began."""
    spec = {"model": "lenet5", "privacy": {"target_epsilon": 3, "target_delta": 0.01}}
    with pytest.raises(ConfigError, match="dp delta 0.01 is not below 1 / 1455"):
        parse_job_spec(spec)
    events: list[TrainingEvent] = []
    runner = JobRunner(
        JobRunnerConfig(repository=tmp_path / "repo", runs_dir=tmp_path / "runs"),
        train=lambda *_a: None,  # type: ignore[arg-type]
        emit=events.append,
        announce=lambda _u: None,
    )
    assert runner.validate("dp", spec) is None
    assert [e.event for e in events] == ["rejected"]
    assert "privacy.target_delta" in (events[0].reason or "")
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))
    result = CliRunner().invoke(cli, ["train", "submit", str(path), "--bootstrap", "unused:1"])
    assert isinstance(result.exception, ConfigError)  # main() prints it, exit 2
    assert "lower --dp-delta" in result.exception.message


# -- resume ----------------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _stop_at(epoch: int) -> Any:
    def on_epoch(record: Any) -> None:
        if record.epoch == epoch:
            raise _Interrupt  # before this epoch's checkpoint: the previous one stays

    return on_epoch


def test_resume_keeps_the_accountant(tmp_path: Path) -> None:
    whole = run_training(_config(tmp_path, epochs=3, patience=0, run_id="whole", publish=False))
    with pytest.raises(_Interrupt):
        run_training(_config(tmp_path, epochs=3, patience=0, run_id="cut"), _stop_at(2))
    run_dir = tmp_path / "runs" / "lenet5-digits-cut"
    saved = load_checkpoint(run_dir)["hooks"]["PrivacyHook"]
    assert saved["history"][0][2] == 12  # one epoch of 12 steps spent before the cut
    resumed = run_training(_config(tmp_path, epochs=3, patience=0, resume=run_dir, publish=False))
    assert resumed.epochs_run == 3
    # the first epoch's spend was not forgotten: the same budget as the uninterrupted run
    assert resumed.dp_epsilon == pytest.approx(whole.dp_epsilon, rel=1e-6)
    assert whole.dp_epsilon is not None and 2.5 < whole.dp_epsilon <= 3.0


def test_resume_of_a_non_private_run_is_refused(tmp_path: Path) -> None:
    same_optimizer = {k: DP_DEFAULTS[k] for k in ("optimizer", "learning_rate", "lr_schedule")}
    same_data = {"preprocess": {"normalize": False, "augment": {"enabled": False}}}  # as DP's
    plain = _config(
        tmp_path, epochs=1, privacy=None, run_id="plain", publish=False, **same_optimizer,
        **same_data,
    )  # fmt: skip
    run_training(plain)
    run_dir = tmp_path / "runs" / "lenet5-digits-plain"
    with pytest.raises(CheckpointError, match="no privacy accountant state"):
        run_training(_config(tmp_path, epochs=2, resume=run_dir, publish=False))
