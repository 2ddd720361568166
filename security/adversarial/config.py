"""How a training job hardens a model against L-inf attacks (`TrainConfig.adversarial`).

All sizes are in pixel space: images scaled to [0, 1], before the model's
normalisation, so `epsilon=0.3` on MNIST means what Madry et al. mean by it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AttackMethod = Literal["pgd", "fgsm"]
LINEAGE_KEY = "adversarial_training"
"""Lineage key of an adversarially trained version: its `AdversarialConfig` as JSON."""

STEP_SIZE_FACTOR = 2.5
"""Default PGD step size is STEP_SIZE_FACTOR * epsilon / steps (Madry et al.'s rule of thumb)."""


def default_step_size(epsilon: float, steps: int) -> float:
    """Step size that lets `steps` steps travel 2.5x the ball's radius."""
    return STEP_SIZE_FACTOR * epsilon / max(steps, 1)


class AdversarialConfig(BaseModel):
    """Adversarial training: each training batch is replaced (in part) by attacked copies."""

    model_config = ConfigDict(extra="forbid")

    method: AttackMethod = Field(
        default="pgd",
        description="pgd: projected gradient descent (Madry et al.); fgsm: one signed step.",
    )
    epsilon: float = Field(
        default=0.3, gt=0, le=1, description="L-inf radius in [0, 1] pixel units."
    )
    steps: int = Field(default=10, ge=1, le=1000, description="PGD iterations (fgsm: ignored).")
    step_size: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="PGD step in pixel units; default 2.5 * epsilon / steps.",
    )
    random_start: bool = Field(
        default=True, description="Start PGD (and fgsm) at a uniform random point of the ball."
    )
    clean_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Share of each batch left clean (0 = all adversarial, as Madry et al.).",
    )
    warmup_epochs: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Ramp epsilon linearly from epsilon/warmup_epochs up to epsilon over the "
        "first epochs (a curriculum); 0 = full epsilon from the start.",
    )

    @model_validator(mode="after")
    def _reachable(self) -> AdversarialConfig:
        reach = (self.step_size or 0.0) * self.steps
        if self.method == "pgd" and self.step_size is not None and reach < self.epsilon:
            raise ValueError(
                f"step_size * steps = {reach:g} cannot reach epsilon {self.epsilon:g}: "
                "raise --adv-step-size or --adv-steps"
            )
        return self

    @property
    def pgd_step_size(self) -> float:
        """The step size PGD uses."""
        return self.step_size or default_step_size(self.epsilon, self.steps)

    def epsilon_at(self, epoch: int) -> float:
        """Epsilon used in `epoch` (1-based), following the warm-up ramp."""
        if self.warmup_epochs <= 0:
            return self.epsilon
        return self.epsilon * min(1.0, max(epoch, 1) / self.warmup_epochs)
