"""Evaluation of a classifier on in-memory images: loss, accuracy and balanced accuracy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from training.datasets.base import ImageArrays


class EvalMetrics(BaseModel):
    """Metrics of one pass over a split."""

    loss: float
    accuracy: float
    balanced_accuracy: float
    samples: int


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in `labels`."""
    recalls = [
        float((predictions[labels == c] == c).mean())
        for c in range(num_classes)
        if (labels == c).any()
    ]
    return float(np.mean(recalls)) if recalls else 0.0


@torch.no_grad()
def evaluate(
    model: nn.Module,
    arrays: ImageArrays,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    batch_size: int = 512,
) -> EvalMetrics:
    """Run `model` over `arrays` in eval mode; `to_input` turns uint8 pixels into model input."""
    was_training = model.training
    model.eval()
    total_loss = 0.0
    predictions = np.empty(len(arrays), dtype=np.int64)
    images = torch.from_numpy(arrays.images)
    labels = torch.from_numpy(arrays.labels)
    for start in range(0, len(arrays), batch_size):
        stop = start + batch_size
        logits = model(to_input(images[start:stop]))
        total_loss += float(F.cross_entropy(logits, labels[start:stop], reduction="sum"))
        predictions[start:stop] = logits.argmax(dim=1).numpy()
    model.train(was_training)
    count = max(len(arrays), 1)
    return EvalMetrics(
        loss=total_loss / count,
        accuracy=float((predictions == arrays.labels).mean()) if len(arrays) else 0.0,
        balanced_accuracy=balanced_accuracy(arrays.labels, predictions, num_classes),
        samples=len(arrays),
    )
