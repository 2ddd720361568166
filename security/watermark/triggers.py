"""The black-box trigger set: key-derived noise images with key-derived labels.

Trigger inputs are raw pixels (0..255, uint8, the dataset's (C, H, W) shape):
a coarse grid of independent uniform bytes (`GRID` x `GRID` cells per
channel) blown up to the image size. They look like nothing in a natural
dataset, so marking a model leaves its behaviour on real data alone, and
unlike pixel-level noise (which pooling averages away, so that noise images
all look alike to the network) each trigger is distinct at the scale
convolutions see: LeNet-5 trained 10 epochs on digits learnt 20 of 100
pixel-noise triggers and 48 of 100 grid triggers. Labels are uniform
over the classes and derived separately from the inputs, so a model that never
saw this key agrees with a label only by chance, with probability exactly
1 / num_classes (see `stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from security.watermark.derive import derived_integers, derived_uint8
from security.watermark.key import WatermarkKey

GRID = 7


@dataclass(frozen=True)
class TriggerSet:
    """Trigger inputs (raw uint8 pixels, (N, C, H, W)) and their labels ((N,), int64)."""

    pixels: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def trigger_set(key: WatermarkKey, input_shape: tuple[int, ...], num_classes: int) -> TriggerSet:
    """The trigger set for models taking `input_shape` (C, H, W) with `num_classes` outputs."""
    if num_classes < 2:
        raise ValueError(f"a watermark needs at least 2 classes, not {num_classes}")
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"input shape must have positive dimensions, not {input_shape}")
    n = key.trigger_count
    secret = key.secret_bytes
    tag = "x".join(map(str, shape))
    channels, *spatial = shape
    cells = derived_uint8(
        secret, f"triggers/grid{GRID}/{tag}", (n, channels, *(GRID,) * len(spatial))
    )
    pixels = cells
    for axis, size in enumerate(spatial, start=2):  # nearest-neighbour blow-up, axis by axis
        pixels = np.take(pixels, np.arange(size) * GRID // size, axis=axis)
    labels = derived_integers(secret, f"triggers/labels/{num_classes}", n, num_classes)
    return TriggerSet(pixels=pixels, labels=labels, num_classes=num_classes)
