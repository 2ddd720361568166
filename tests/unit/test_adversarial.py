"""FGSM / PGD attacks, the pixel-space wrapper, the adversarial-training hook and its flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from headrace.commands.adversarial_options import adversarial_settings
from headrace.commands.options import build_config
from headrace.errors import ConfigError
from security.adversarial import (
    AdversarialConfig,
    PixelSpaceModel,
    fgsm,
    pgd,
    robustness_report,
)
from training.adversarial import AdversarialHook
from training.config import TrainConfig
from training.datasets import DatasetSplits, load_splits
from training.export import export_onnx, verify_onnx
from training.gradcheck import check_gradients
from training.hooks import build_hooks
from training.loop import Trainer
from training.models import MODELS, build_model
from training.preprocess import BatchPipeline, ChannelStats
from training.preprocess.normalize import standardize


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_splits("digits", seed=0)


@pytest.fixture(scope="module")
def linear(digits: DatasetSplits) -> PixelSpaceModel:
    """A linear classifier trained on digits (full batch, a second of CPU): an undefended model."""
    torch.manual_seed(0)
    stats = ChannelStats.of(digits.train.images)
    model = PixelSpaceModel(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), stats.mean, stats.std)
    x = torch.from_numpy(digits.train.images).float() / 255
    y = torch.from_numpy(digits.train.labels).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


def _test_batch(digits: DatasetSplits, n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(digits.test.images[:n]).float() / 255
    return x, torch.from_numpy(digits.test.labels[:n]).long()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# -- attacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("random_start", [False, True])
def test_attacks_stay_in_the_ball_and_in_pixel_range(linear, digits, random_start) -> None:
    x, y = _test_batch(digits)
    g = torch.Generator().manual_seed(1)
    for adv in (
        fgsm(linear, x, y, 0.2, random_start=random_start, generator=g),
        pgd(linear, x, y, 0.2, 0.05, 7, random_start=random_start, generator=g),
        pgd(linear, x, y, 0.2, 0.05, 7, random_start=random_start, keep_best=True, generator=g),
    ):
        assert adv.shape == x.shape
        assert float((adv - x).abs().max()) <= 0.2 + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        assert float((adv - x).abs().max()) > 0.1  # it moved


def test_pgd_breaks_an_undefended_model_and_is_stronger_than_fgsm(linear, digits) -> None:
    x, y = _test_batch(digits)
    clean = _accuracy(linear, x, y)
    assert clean > 0.85
    g = torch.Generator().manual_seed(0)
    after_fgsm = _accuracy(linear, fgsm(linear, x, y, 0.1), y)
    after_pgd = _accuracy(linear, pgd(linear, x, y, 0.1, 0.01, 20, generator=g), y)
    best = _accuracy(linear, pgd(linear, x, y, 0.1, 0.01, 20, keep_best=True, generator=g), y)
    assert after_fgsm < clean - 0.2
    assert best <= after_pgd <= after_fgsm
    assert _accuracy(linear, pgd(linear, x, y, 0.3, 0.01, 40, generator=g), y) < 0.05


def test_attacks_touch_neither_parameter_gradients_nor_mode(linear, digits) -> None:
    x, y = _test_batch(digits, 16)
    linear.train()
    try:
        pgd(linear, x, y, 0.1, 0.02, 3)
        fgsm(linear, x, y, 0.1)
        assert linear.training
        assert all(p.grad is None for p in linear.parameters())
    finally:
        linear.eval()


def test_attacks_refuse_pixels_outside_0_1(linear, digits) -> None:
    x, y = _test_batch(digits, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(linear, x * 255, y, 0.1, 0.01, 2)


def test_pixel_space_model_matches_the_training_normalisation(digits) -> None:
    stats = ChannelStats.of(digits.train.images)
    net = build_model("lenet5").eval()
    wrapped = PixelSpaceModel(net, stats.mean, stats.std)
    x, _ = _test_batch(digits, 8)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), net(standardize(x, stats)))
    assert torch.allclose(wrapped.to_pixels(wrapped.to_model_input(x)), x, atol=1e-6)


def test_robustness_report_counts_each_epsilon(linear, digits) -> None:
    report = robustness_report(
        linear, digits.test.images[:100], digits.test.labels[:100], [0.0, 0.3], steps=10
    )
    assert report.samples == 100 and report.pgd_steps == 10
    assert report.row(0.0).pgd_accuracy == report.clean_accuracy > 0.85
    assert report.row(0.3).pgd_accuracy < 0.05
    assert report.row(0.3).pgd_step_size == pytest.approx(2.5 * 0.3 / 10)
    assert "0.300" in report.table()


# -- config and flags ------------------------------------------------------------------------


def test_config_is_strict_and_ramps_epsilon() -> None:
    with pytest.raises(ValidationError):
        AdversarialConfig(method="pgd", epsilon=0.3, stepz=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="cannot reach epsilon"):
        AdversarialConfig(epsilon=0.3, steps=2, step_size=0.1)
    cfg = AdversarialConfig(epsilon=0.3, steps=10, warmup_epochs=3)
    assert cfg.pgd_step_size == pytest.approx(0.075)
    assert [round(cfg.epsilon_at(e), 3) for e in (1, 2, 3, 9)] == [0.1, 0.2, 0.3, 0.3]


def test_train_flags_build_the_config_or_say_what_is_wrong(tmp_path: Path) -> None:
    assert adversarial_settings(None, None, None, None, None, None) is None
    with pytest.raises(ConfigError, match="--adv-epsilon, --adv-steps only apply"):
        adversarial_settings(None, 0.3, 7, None, None, None)
    # fgsm ignored them (and the published lineage recorded them as if used)
    with pytest.raises(ConfigError, match="--adv-steps, --adv-step-size only apply with"):
        adversarial_settings("fgsm", 0.3, 7, 0.1, None, None)
    with pytest.raises(ConfigError, match="--adv-step-size only apply with --adversarial pgd"):
        adversarial_settings("fgsm", None, None, 0.1, None, None)
    assert adversarial_settings("fgsm", 0.2, None, None, 0.5, 1) == {
        "method": "fgsm",
        "epsilon": 0.2,
        "clean_fraction": 0.5,
        "warmup_epochs": 1,
    }
    settings = adversarial_settings("pgd", 0.3, 7, 0.1, None, None)
    config = build_config(TrainConfig, adversarial=settings, repository=tmp_path)
    assert config.adversarial == AdversarialConfig(epsilon=0.3, steps=7, step_size=0.1)
    with pytest.raises(ConfigError, match="adversarial.epsilon"):
        build_config(TrainConfig, adversarial={"method": "pgd", "epsilon": 3.0})
    hooks = build_hooks(config)
    assert [type(h) for h in hooks] == [AdversarialHook]
    # a ramp longer than the run never reached epsilon, while the version was published as
    # trained at it
    ramp = {"method": "pgd", "epsilon": 0.3, "warmup_epochs": 5}
    with pytest.raises(ConfigError, match="warm-up of 5 epochs is longer than the 4 epochs"):
        build_config(TrainConfig, adversarial=ramp, epochs=4, repository=tmp_path)
    assert build_config(TrainConfig, adversarial=ramp, epochs=5, repository=tmp_path)


# -- the training hook -----------------------------------------------------------------------


def _trainer(tmp_path: Path, adversarial: AdversarialConfig, train_rows: int = 256) -> Trainer:
    config = TrainConfig(
        epochs=1,
        adversarial=adversarial,
        repository=tmp_path / "repo",
        runs_dir=tmp_path / "runs",
        progress=False,
    )
    splits = load_splits("digits", seed=0)
    small = DatasetSplits(
        splits.name,
        splits.classes,
        splits.train.subset(np.arange(train_rows)),
        splits.val.subset(np.arange(60)),
        splits.test.subset(np.arange(60)),
    )
    pipeline = BatchPipeline(
        config.preprocess, "digits", small.train.images, small.train.labels, 10, config.seed
    )
    torch.manual_seed(0)
    model = build_model("lenet5-wide")
    return Trainer(model, small, pipeline, config, tmp_path / "run", build_hooks(config))


def test_hook_attacks_in_pixel_space_and_keeps_the_clean_share(tmp_path: Path) -> None:
    cfg = AdversarialConfig(epsilon=0.25, steps=3, clean_fraction=0.25)
    trainer = _trainer(tmp_path, cfg)
    [hook] = trainer.hooks
    assert isinstance(hook, AdversarialHook)
    pixels = torch.from_numpy(trainer.splits.train.images[:32])
    inputs = trainer.pipeline.train_batch(pixels)
    targets = torch.from_numpy(trainer.splits.train.labels[:32]).long()
    trainer.model.train()
    out, out_targets = hook.on_batch(trainer.model, inputs, targets)
    assert trainer.model.training  # mode restored
    assert all(p.grad is None for p in trainer.model.parameters())
    assert torch.equal(out_targets, targets) and out.shape == inputs.shape
    assert torch.equal(out[:8], inputs[:8])  # 25% of 32 rows stay clean
    stats = trainer.pipeline.stats
    before = PixelSpaceModel(trainer.model, stats.mean, stats.std).to_pixels(inputs[8:])
    after = PixelSpaceModel(trainer.model, stats.mean, stats.std).to_pixels(out[8:])
    moved = (after - before.clamp(0, 1)).abs().amax(dim=(1, 2, 3))
    assert float(moved.max()) <= 0.25 + 1e-5 and float(moved.min()) > 0.1
    assert float(after.min()) >= -1e-5 and float(after.max()) <= 1 + 1e-5
    assert hook.examples == 24


def test_adversarial_fit_selects_on_the_loss_under_attack_and_publishes_it(
    tmp_path: Path,
) -> None:
    trainer = _trainer(tmp_path, AdversarialConfig(epsilon=0.2, steps=2), train_rows=128)
    [hook] = trainer.hooks
    assert isinstance(hook, AdversarialHook)
    result = trainer.fit()
    assert hook.examples == 128
    assert len(hook.history) == 1
    robust_val_loss, _ = hook.history[0]
    assert result.best_val_loss == pytest.approx(robust_val_loss)
    assert result.history[0].val_loss < robust_val_loss  # clean loss is lower than under attack
    info = hook.publish_info(trainer.model)
    assert 0.0 <= info.metrics["test_robust_accuracy"] <= 1.0
    assert "eps=0.2 steps=20" in str(info.lineage["robust_accuracy_attack"])


# -- the wider LeNet -------------------------------------------------------------------------


def test_lenet5_wide_is_registered_exports_and_has_correct_gradients(tmp_path: Path) -> None:
    assert "lenet5-wide" in MODELS
    torch.manual_seed(0)
    model = build_model("lenet5-wide").eval()
    path = export_onnx(model, (1, 28, 28), tmp_path / "wide.onnx")
    assert verify_onnx(model, path, (1, 28, 28)) < 1e-4
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    assert check_gradients(model, x, y, max_params=60).passed
    colour = build_model("lenet5-wide", 10, in_channels=3, image_size=32)
    assert colour(torch.rand(2, 3, 32, 32)).shape == (2, 10)
