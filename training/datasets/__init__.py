"""Datasets by registered name, and their deterministic splits.

`digits` is embedded (scikit-learn's handwritten digits at 28x28); `mnist`
reads a folder of IDX files and `cifar10` a folder of the python pickle
batches. `load_splits` gives train / val / test arrays, the same for the same
seed on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from headrace.errors import DatasetError, UnknownName
from training.datasets.base import DatasetSplits, ImageArrays, RawDataset
from training.datasets.cifar10 import load_cifar10
from training.datasets.digits import load_digits_28
from training.datasets.mnist import load_mnist

__all__ = [
    "DATASETS",
    "DatasetSplits",
    "ImageArrays",
    "RawDataset",
    "load_raw",
    "load_splits",
    "split_raw",
]

# name -> (loader, needs a data folder)
DATASETS: dict[str, tuple[Callable[..., RawDataset], bool]] = {
    "digits": (load_digits_28, False),
    "mnist": (load_mnist, True),
    "cifar10": (load_cifar10, True),
}


def load_raw(name: str, data_dir: Path | None = None) -> RawDataset:
    """Load a dataset by name; file-based datasets need `data_dir`."""
    if name not in DATASETS:
        raise UnknownName(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    loader, needs_folder = DATASETS[name]
    if not needs_folder:
        return loader()
    if data_dir is None:
        raise DatasetError(
            f"dataset {name!r} is read from files: pass --data-dir FOLDER "
            "(or set HEADRACE_DATA_DIR)"
        )
    return loader(Path(data_dir))


def _stratified_split(
    arrays: ImageArrays, fraction: float, seed: int
) -> tuple[ImageArrays, ImageArrays]:
    """Split off `fraction` of the rows, keeping class proportions where possible."""
    index = np.arange(len(arrays))
    counts = np.bincount(arrays.labels)
    stratify = arrays.labels if counts[counts > 0].min() >= 2 else None
    keep, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    return arrays.subset(np.sort(keep)), arrays.subset(np.sort(held))


def split_raw(
    raw: RawDataset, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> DatasetSplits:
    """Deterministic splits: the official test part when there is one, else `test_fraction`."""
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1:
        raise DatasetError("val and test fractions must be between 0 and 1")
    if raw.official_test is not None:
        pool, test = raw.data, raw.official_test
    else:
        pool, test = _stratified_split(raw.data, test_fraction, seed)
    train, val = _stratified_split(pool, val_fraction, seed)
    return DatasetSplits(name=raw.name, classes=raw.classes, train=train, val=val, test=test)


def load_splits(
    name: str,
    data_dir: Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> DatasetSplits:
    """Load a dataset by name and split it deterministically by `seed`."""
    return split_raw(load_raw(name, data_dir), seed, val_fraction, test_fraction)
