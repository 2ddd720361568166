"""Per-channel normalisation with statistics taken from the training split only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from serving.model_config import PreprocessingSpec

PIXEL_SCALE = 1.0 / 255.0


@dataclass(frozen=True)
class ChannelStats:
    """Mean and standard deviation per channel of pixels scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, images: np.ndarray) -> ChannelStats:
        """Statistics of uint8 images shaped (N, C, H, W)."""
        scaled = images.astype(np.float64) * PIXEL_SCALE
        mean = scaled.mean(axis=(0, 2, 3))
        std = scaled.std(axis=(0, 2, 3))
        return cls(tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std))

    @classmethod
    def identity(cls, channels: int) -> ChannelStats:
        """Statistics that leave scaled pixels unchanged."""
        return cls((0.0,) * channels, (1.0,) * channels)

    def to_spec(self) -> PreprocessingSpec:
        """The serving-side description of this normalisation (stored in config.json)."""
        return PreprocessingSpec(scale=PIXEL_SCALE, mean=list(self.mean), std=list(self.std))


def standardize(scaled: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """Float (N, C, H, W) pixels in [0, 1] -> standardised model input."""
    mean = torch.tensor(stats.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(stats.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (scaled - mean) / std


def to_model_input(pixels: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """uint8 (N, C, H, W) pixels -> float32 model input: scale, then standardise."""
    return standardize(pixels.to(torch.float32) * PIXEL_SCALE, stats)
