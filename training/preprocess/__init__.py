"""The preprocessing pipeline: normalisation, augmentation, class balancing, and data profiles.

`BatchPipeline` turns uint8 training batches into model input; the same
normalisation is published with the version (its `PreprocessingSpec`, kept in
the version's metadata.json) for serving.
"""

from __future__ import annotations

import numpy as np
import torch

from training.preprocess.augment import augment
from training.preprocess.balance import balanced_indices, class_weights
from training.preprocess.config import AugmentConfig, BalanceMode, PreprocessConfig
from training.preprocess.normalize import PIXEL_SCALE, ChannelStats, standardize, to_model_input
from training.preprocess.profile import DataProfile, profile_arrays

__all__ = [
    "AugmentConfig",
    "BalanceMode",
    "BatchPipeline",
    "ChannelStats",
    "DataProfile",
    "PreprocessConfig",
    "balanced_indices",
    "class_weights",
    "profile_arrays",
    "to_model_input",
]


class BatchPipeline:
    """Preprocessing fitted on a training split: epoch order, batch transforms, loss weights."""

    def __init__(
        self,
        config: PreprocessConfig,
        dataset: str,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        num_classes: int,
        seed: int,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.labels = train_labels
        self.num_classes = num_classes
        channels = int(train_images.shape[1])
        self.stats = (
            ChannelStats.of(train_images) if config.normalize else ChannelStats.identity(channels)
        )
        self.generator = torch.Generator().manual_seed(seed)

    def epoch_order(self) -> np.ndarray:
        """Indices of one training epoch: shuffled, or class-balanced draws with `sampler`."""
        if self.config.balance == "sampler":
            return balanced_indices(self.labels, self.num_classes, self.generator)
        return torch.randperm(len(self.labels), generator=self.generator).numpy()

    def loss_weights(self) -> torch.Tensor | None:
        """Per-class loss weights with `balance: loss`, else None."""
        if self.config.balance == "loss":
            return class_weights(self.labels, self.num_classes)
        return None

    def train_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> augmented, normalised float input."""
        scaled = pixels.to(torch.float32) * PIXEL_SCALE
        augmented = augment(scaled, self.config.augment, self.dataset, self.generator)
        return standardize(augmented, self.stats)

    def eval_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> normalised float input, no augmentation."""
        return to_model_input(pixels, self.stats)
