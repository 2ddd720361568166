"""A trained network seen from pixel space: [0, 1] pixels in, logits out.

Models are trained and served on normalised input, `(pixel - mean[c]) / std[c]`
with the training split's per-channel statistics (the `PreprocessingSpec` a
published version records in its metadata.json, `ChannelStats` while
training). Attacks are defined on pixels, so they run through this wrapper;
`to_pixels` / `to_model_input` convert batches between the two spaces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PixelSpaceModel(nn.Module):
    """`model` preceded by its input normalisation, so it takes pixels in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std need one value per channel, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive per channel, got {std}")
        self.model = model
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(shape))

    def to_model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> the normalised input the wrapped model expects."""
        return (pixels - self.mean) / self.std

    def to_pixels(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalised model input -> pixels (the inverse of `to_model_input`)."""
        return inputs * self.std + self.mean

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.to_model_input(pixels))
