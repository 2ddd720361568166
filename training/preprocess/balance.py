"""Class balancing: inverse-frequency class weights for the loss, or per-sample sampling weights."""

from __future__ import annotations

import numpy as np
import torch


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Weight per class, inversely proportional to its count, averaging 1 over the samples."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def balanced_indices(
    labels: np.ndarray, num_classes: int, generator: torch.Generator
) -> np.ndarray:
    """One epoch of indices drawn with replacement so that every class is equally likely."""
    per_sample = class_weights(labels, num_classes)[torch.from_numpy(labels)]
    drawn = torch.multinomial(per_sample, len(labels), replacement=True, generator=generator)
    return drawn.numpy()
