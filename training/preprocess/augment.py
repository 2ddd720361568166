"""Batch augmentation written with torch alone: random crop with padding, flips, small rotations.

Works on float batches (N, C, H, W) in [0, 1] before normalisation, so the
zero padding and the area rotated in are black, as in the raw images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.preprocess.config import AugmentConfig


def random_crop(batch: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad every side by `padding` and crop back to the original size at a random offset."""
    if padding == 0:
        return batch
    n, _, h, w = batch.shape
    padded = F.pad(batch, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    rows = offsets[:, 0].view(n, 1, 1) + torch.arange(h).view(1, h, 1)
    cols = offsets[:, 1].view(n, 1, 1) + torch.arange(w).view(1, 1, w)
    index = torch.arange(n).view(n, 1, 1)
    # Advanced indexing picks each image's own window: (N, H, W, C) -> (N, C, H, W).
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip a random half of the images left to right."""
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    out = batch.clone()
    out[flip] = out[flip].flip(-1)
    return out


def random_rotation(
    batch: torch.Tensor, max_deg: float, generator: torch.Generator
) -> torch.Tensor:
    """Rotate each image by a random angle in [-max_deg, max_deg] about its centre."""
    if max_deg == 0:
        return batch
    n = batch.shape[0]
    angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_deg)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zeros = torch.zeros(n)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(
    batch: torch.Tensor, config: AugmentConfig, dataset: str, generator: torch.Generator
) -> torch.Tensor:
    """Apply the configured augmentations to a float batch in [0, 1]."""
    if not config.enabled:
        return batch
    out = random_crop(batch, config.crop_padding, generator)
    if config.flips_for(dataset):
        out = random_flip(out, generator)
    return random_rotation(out, config.rotation_deg, generator)
