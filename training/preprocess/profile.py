"""A dataset's profile: class counts, imbalance, per-channel statistics and exact duplicates."""

from __future__ import annotations

import hashlib

import numpy as np
from pydantic import BaseModel, Field

from training.datasets.base import ImageArrays
from training.preprocess.normalize import ChannelStats

IMBALANCE_WARNING_RATIO = 1.5


class DataProfile(BaseModel):
    """What `headrace data profile` reports (and `--json` prints)."""

    dataset: str
    samples: int
    image_shape: list[int] = Field(description="(C, H, W) of one image.")
    class_counts: dict[str, int]
    imbalance_ratio: float = Field(
        description="Largest class count over smallest (inf if one is empty)."
    )
    channel_mean: list[float] = Field(description="Per-channel mean of pixels scaled to [0, 1].")
    channel_std: list[float]
    exact_duplicates: int = Field(description="Images identical to an earlier image.")
    conflicting_duplicates: int = Field(description="Duplicates whose labels disagree.")
    warnings: list[str] = Field(default_factory=list)


def _duplicates(arrays: ImageArrays) -> tuple[int, int]:
    """Count images equal byte for byte to an earlier one, and those with a different label."""
    first_label: dict[bytes, int] = {}
    duplicates = conflicts = 0
    for image, label in zip(arrays.images, arrays.labels, strict=True):
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        if digest in first_label:
            duplicates += 1
            conflicts += int(first_label[digest] != int(label))
        else:
            first_label[digest] = int(label)
    return duplicates, conflicts


def profile_arrays(dataset: str, arrays: ImageArrays, classes: tuple[str, ...]) -> DataProfile:
    """Profile labelled images; warns when the largest class is over 1.5x the smallest."""
    counts = np.bincount(arrays.labels, minlength=len(classes))
    smallest, largest = int(counts.min()), int(counts.max())
    ratio = float("inf") if smallest == 0 else largest / smallest
    stats = ChannelStats.of(arrays.images)
    duplicates, conflicts = _duplicates(arrays)
    warnings: list[str] = []
    if ratio > IMBALANCE_WARNING_RATIO:
        small_name = classes[int(counts.argmin())]
        large_name = classes[int(counts.argmax())]
        warnings.append(
            f"class imbalance: largest class {large_name!r} has {largest} samples, "
            f"{ratio:.2f}x the smallest {small_name!r} ({smallest}); "
            "consider --balance sampler or --balance loss"
        )
    if conflicts:
        warnings.append(
            f"{conflicts} duplicate images carry a different label than their first copy"
        )
    return DataProfile(
        dataset=dataset,
        samples=len(arrays),
        image_shape=[int(d) for d in arrays.images.shape[1:]],
        class_counts={name: int(c) for name, c in zip(classes, counts, strict=True)},
        imbalance_ratio=ratio,
        channel_mean=list(stats.mean),
        channel_std=list(stats.std),
        exact_duplicates=duplicates,
        conflicting_duplicates=conflicts,
        warnings=warnings,
    )
