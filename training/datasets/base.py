"""Types shared by the dataset loaders: raw image arrays and their splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImageArrays:
    """Images and labels held in memory.

    `images` is uint8 with shape (N, C, H, W); `labels` is int64 with shape (N,).
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.images.shape[0]} images but labels of shape {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray) -> ImageArrays:
        """The rows at `index`, in that order."""
        return ImageArrays(self.images[index], self.labels[index])


@dataclass(frozen=True)
class RawDataset:
    """What a loader returns: labelled images, plus the official test part if there is one."""

    name: str
    classes: tuple[str, ...]
    data: ImageArrays
    official_test: ImageArrays | None = None


@dataclass(frozen=True)
class DatasetSplits:
    """Deterministic train / validation / test splits of one dataset."""

    name: str
    classes: tuple[str, ...]
    train: ImageArrays
    val: ImageArrays
    test: ImageArrays
    lineage: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    """Where the records came from, recorded with a published version (e.g. shard bounds)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.train.images.shape
        return (int(c), int(h), int(w))
