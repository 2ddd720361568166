"""Clean and robust accuracy of a classifier over several L-inf radii.

`robustness_report` attacks every sample with FGSM and with PGD (random start,
best iterate per sample) at each epsilon, in [0, 1] pixel space, and counts
what the model still gets right; epsilon 0 is plain clean accuracy.
`correct_under_attack` gives the per-sample outcome, so callers can combine
attacks (a sample is robust only if it survives all of them).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from security.adversarial.attacks import fgsm, pgd
from security.adversarial.config import default_step_size


class RobustnessRow(BaseModel):
    """Accuracy under attack at one epsilon."""

    epsilon: float
    fgsm_accuracy: float
    pgd_accuracy: float
    pgd_step_size: float


class RobustnessReport(BaseModel):
    """What `headrace security robustness` prints."""

    samples: int
    clean_accuracy: float
    pgd_steps: int
    random_start: bool = True
    rows: list[RobustnessRow] = Field(default_factory=list)
    seconds: float = 0.0

    def row(self, epsilon: float) -> RobustnessRow:
        """The row of `epsilon` (KeyError if it was not evaluated)."""
        for row in self.rows:
            if abs(row.epsilon - epsilon) < 1e-12:
                return row
        raise KeyError(epsilon)

    def table(self) -> str:
        """The report as a fixed-width text table."""
        lines = [
            f"clean accuracy {self.clean_accuracy:.4f} on {self.samples} samples; "
            f"PGD {self.pgd_steps} steps, random start, best iterate per sample",
            f"{'epsilon':>8} {'step':>8} {'fgsm acc':>9} {'pgd acc':>9}",
        ]
        for row in self.rows:
            lines.append(
                f"{row.epsilon:>8.3f} {row.pgd_step_size:>8.4f} "
                f"{row.fgsm_accuracy:>9.4f} {row.pgd_accuracy:>9.4f}"
            )
        return "\n".join(lines)


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32) / 255.0
    return pixels, torch.from_numpy(np.ascontiguousarray(labels)).to(torch.int64)


def _right(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixels).argmax(dim=1) == labels


def correct_under_attack(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    method: Literal["clean", "fgsm", "pgd"],
    epsilon: float = 0.0,
    *,
    steps: int = 40,
    step_size: float | None = None,
    batch_size: int = 250,
    seed: int = 0,
) -> np.ndarray:
    """Per sample, whether `model` still classifies it right after the attack (bool array).

    `model` maps [0, 1] pixels to logits (e.g. `PixelSpaceModel`), `images` are uint8.
    PGD starts at a random point (seeded by `seed`) and keeps each sample's best iterate.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    pixels, targets = _to_tensors(images, labels)
    step = step_size or default_step_size(epsilon, steps)
    right = np.zeros(len(pixels), dtype=bool)
    try:
        for i in range(0, len(pixels), batch_size):
            x, y = pixels[i : i + batch_size], targets[i : i + batch_size]
            if method == "fgsm" and epsilon > 0:
                x = fgsm(model, x, y, epsilon)
            elif method == "pgd" and epsilon > 0:
                x = pgd(model, x, y, epsilon, step, steps, keep_best=True, generator=generator)
            right[i : i + batch_size] = _right(model, x, y).numpy()
    finally:
        model.train(was_training)
    return right


def robustness_report(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    epsilons: Sequence[float],
    *,
    steps: int = 40,
    step_size: float | None = None,
    batch_size: int = 250,
    seed: int = 0,
) -> RobustnessReport:
    """Clean accuracy, then FGSM and PGD accuracy at each epsilon (see `correct_under_attack`).

    `step_size` None uses `2.5 * epsilon / steps` at each epsilon; Madry et al.'s MNIST
    evaluation is `steps=40, step_size=0.01` at epsilon 0.3.
    """
    started = time.perf_counter()

    def right(method: Literal["clean", "fgsm", "pgd"], epsilon: float) -> np.ndarray:
        return correct_under_attack(
            model, images, labels, method, epsilon,
            steps=steps, step_size=step_size, batch_size=batch_size, seed=seed,
        )  # fmt: skip

    clean = right("clean", 0.0)
    count = max(len(images), 1)
    rows = []
    for epsilon in epsilons:
        fgsm_right, pgd_right = right("fgsm", epsilon), right("pgd", epsilon)
        rows.append(
            RobustnessRow(
                epsilon=epsilon,
                fgsm_accuracy=float(fgsm_right.sum()) / count,
                pgd_accuracy=float(pgd_right.sum()) / count,
                pgd_step_size=step_size or default_step_size(epsilon, steps),
            )
        )
    return RobustnessReport(
        samples=len(images),
        clean_accuracy=float(clean.sum()) / count,
        pgd_steps=steps,
        rows=rows,
        seconds=time.perf_counter() - started,
    )
