"""Extension points of the training loop, used by the security features.

A `TrainingHook` may change each training batch (adversarial examples, watermark
trigger inputs), add a term to the loss (a white-box watermark regulariser) and
contribute to what is published with the model (metrics, lineage, privacy
budget, watermark id). `Trainer` calls the hooks in order; with none the loop
is plain supervised training.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

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

    def detach(self, trainer: Trainer) -> None:
        """Called once when `fit` has trained: undo what `attach` did to the model."""

    def epoch_batches(self) -> Iterable[torch.Tensor] | None:
        """One epoch's index batches into the training split (int64, possibly empty), or
        None for the trainer's shuffled slices of `batch_size` (DP: Poisson sampling)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the hook needs to resume (tensors and plain values); saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` from a checkpoint ({} when the checkpoint has none)."""

    def on_batch(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch to train on (model input space, i.e. after normalisation)."""
        return inputs, targets

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the batch loss, or None."""
        return None

    def logits_loss(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor | None:
        """A term added to the batch loss that needs the model's outputs on the batch it
        trained on (e.g. knowledge distillation), or None."""
        return None

    def selection_loss(self, model: nn.Module) -> float | None:
        """A validation loss that replaces the clean one for early stopping, the plateau
        schedule and best-weights selection (e.g. the loss under attack), or None."""
        return None

    def publish_info(self, model: nn.Module) -> PublishInfo:
        """Metadata for the published version, computed after training."""
        return PublishInfo()


def build_hooks(config: TrainConfig) -> list[TrainingHook]:
    """The hooks a training config asks for, in the order they run on each batch."""
    hooks: list[TrainingHook] = []
    if config.adversarial is not None:  # first: watermark trigger inputs are not attacked
        from training.adversarial import AdversarialHook  # imports this module: load it late

        hooks.append(AdversarialHook(config.adversarial))
    if config.watermark is not None:
        from security.watermark.hook import WatermarkHook  # imports this module: load it late

        hooks.append(WatermarkHook.from_config(config.watermark))
    if config.privacy is not None:  # TrainConfig refuses it beside the other hooks
        from training.privacy import PrivacyHook  # imports this module: load it late

        hooks.append(PrivacyHook(config.privacy))
    return hooks
