"""Preprocessing: statistics from the training split, augmentation, balancing, profiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.datasets import ImageArrays
from training.preprocess import (
    AugmentConfig,
    BatchPipeline,
    ChannelStats,
    PreprocessConfig,
    balanced_indices,
    class_weights,
    profile_arrays,
)
from training.preprocess.augment import random_crop, random_flip, random_rotation


def _arrays(counts: list[int], channels: int = 1, size: int = 8, seed: int = 0) -> ImageArrays:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    images = rng.integers(0, 256, size=(len(labels), channels, size, size), dtype=np.uint8)
    return ImageArrays(images, labels)


def test_channel_stats_match_numpy_per_channel() -> None:
    arrays = _arrays([20, 20], channels=3)
    stats = ChannelStats.of(arrays.images)
    scaled = arrays.images / 255.0
    for c in range(3):
        assert stats.mean[c] == pytest.approx(scaled[:, c].mean())
        assert stats.std[c] == pytest.approx(scaled[:, c].std())


def test_pipeline_normalises_with_training_statistics_only() -> None:
    train = _arrays([30, 30], seed=1)
    pipeline = BatchPipeline(PreprocessConfig(), "digits", train.images, train.labels, 2, seed=0)
    out = pipeline.eval_batch(torch.from_numpy(train.images))
    assert out.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert out.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
    spec = pipeline.stats.to_spec()
    assert spec.mean == list(pipeline.stats.mean) and spec.scale == pytest.approx(1 / 255)


def test_off_pipeline_only_scales() -> None:
    train = _arrays([5, 5])
    pipeline = BatchPipeline(PreprocessConfig.off(), "digits", train.images, train.labels, 2, 0)
    pixels = torch.from_numpy(train.images)
    assert torch.allclose(pipeline.train_batch(pixels), pixels.float() / 255.0)


def test_random_crop_shifts_content_within_padding() -> None:
    batch = torch.zeros(16, 1, 8, 8)
    batch[:, :, 4, 4] = 1.0
    out = random_crop(batch, 2, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
    positions = {tuple(torch.nonzero(img[0])[0].tolist()) for img in out}
    assert len(positions) > 1
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in positions)
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(16))


def test_flip_mirrors_about_half_the_batch() -> None:
    batch = torch.arange(64.0).view(1, 1, 8, 8).repeat(200, 1, 1, 1)
    out = random_flip(batch, torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(img, batch[0].flip(-1))) for img in out]
    assert 60 < sum(flipped) < 140
    assert all(f or torch.equal(img, batch[0]) for f, img in zip(flipped, out, strict=True))


def test_rotation_keeps_mass_roughly_and_zero_degrees_is_identity() -> None:
    batch = torch.zeros(4, 1, 28, 28)
    batch[:, :, 10:18, 10:18] = 1.0
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_rotation(batch, 0.0, g), batch)
    rotated = random_rotation(batch, 10.0, g)
    assert not torch.allclose(rotated, batch)
    assert rotated.sum().item() == pytest.approx(batch.sum().item(), rel=0.05)


def test_flips_only_where_the_dataset_allows() -> None:
    config = AugmentConfig()
    assert config.flips_for("cifar10") and not config.flips_for("digits")
    assert AugmentConfig(horizontal_flip=True).flips_for("digits")


def test_class_weights_inverse_to_frequency() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    weights = class_weights(labels, 2)
    assert weights[1] / weights[0] == pytest.approx(9.0)
    assert float((weights[torch.from_numpy(labels)]).mean()) == pytest.approx(1.0)


def test_balanced_sampler_draws_classes_evenly() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    draws = balanced_indices(labels, 2, torch.Generator().manual_seed(0))
    share = (labels[draws] == 1).mean()
    assert len(draws) == 1000 and 0.45 < share < 0.55


def test_pipeline_loss_weights_only_in_loss_mode() -> None:
    train = _arrays([40, 10])
    loss_mode = PreprocessConfig(balance="loss")
    pipeline = BatchPipeline(loss_mode, "digits", train.images, train.labels, 2, 0)
    weights = pipeline.loss_weights()
    assert weights is not None and weights[1] > weights[0]
    plain = BatchPipeline(PreprocessConfig(), "digits", train.images, train.labels, 2, 0)
    assert plain.loss_weights() is None


def test_profile_counts_duplicates_and_warns_on_imbalance() -> None:
    arrays = _arrays([30, 10])
    images = arrays.images.copy()
    images[1] = images[0]  # same label: a plain duplicate
    images[35] = images[2]  # label 1 vs label 0: a conflicting duplicate
    profile = profile_arrays("toy", ImageArrays(images, arrays.labels), ("a", "b"))
    assert profile.class_counts == {"a": 30, "b": 10}
    assert profile.imbalance_ratio == pytest.approx(3.0)
    assert profile.exact_duplicates == 2 and profile.conflicting_duplicates == 1
    assert any("imbalance" in w for w in profile.warnings)


def test_profile_of_balanced_data_has_no_imbalance_warning() -> None:
    profile = profile_arrays("toy", _arrays([10, 12]), ("a", "b"))
    assert profile.imbalance_ratio == pytest.approx(1.2)
    assert not any("imbalance" in w for w in profile.warnings)
