"""Extension points of the training loop, used by the security features.

A `TrainingHook` may change each training batch (adversarial examples, watermark
trigger inputs), add a term to the loss (a white-box watermark regulariser) and
contribute to what is published with the model (metrics, lineage, privacy
budget, watermark id). `Trainer` calls the hooks in order; with none the loop
is plain supervised training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, Field
from torch import nn

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.loop import Trainer


class PublishInfo(BaseModel):
    """What a hook adds to a published version's metadata.json."""

    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    watermark_id: str | None = None

    def merged(self, other: PublishInfo) -> PublishInfo:
        """This info with `other`'s entries added (other's scalar fields win when set)."""
        return PublishInfo(
            metrics={**self.metrics, **other.metrics},
            lineage={**self.lineage, **other.lineage},
            dp_epsilon=other.dp_epsilon if other.dp_epsilon is not None else self.dp_epsilon,
            dp_delta=other.dp_delta if other.dp_delta is not None else self.dp_delta,
            watermark_id=other.watermark_id or self.watermark_id,
        )


class TrainingHook:
    """Base class: every method is a no-op, so a hook overrides only what it needs."""

    def attach(self, trainer: Trainer) -> None:
        """Called once when the trainer is built (before any resume)."""

    def on_batch(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch to train on (model input space, i.e. after normalisation)."""
        return inputs, targets

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the batch loss, or None."""
        return None

    def publish_info(self, model: nn.Module) -> PublishInfo:
        """Metadata for the published version, computed after training."""
        return PublishInfo()


def build_hooks(config: TrainConfig) -> list[TrainingHook]:
    """The hooks a training config asks for, in the order they run on each batch."""
    hooks: list[TrainingHook] = []
    return hooks
