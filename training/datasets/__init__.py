"""Datasets by registered name, and their deterministic splits.

`digits` is embedded (scikit-learn's handwritten digits at 28x28); `mnist`
reads a folder of IDX files and `cifar10` a folder of the python pickle
batches. `load_splits` gives train / val / test arrays, the same for the same
seed on every machine. With a `ShardSource` they come from the shards the
ingestion worker wrote instead (`training.datasets.shards`), and the splits
carry the selection's lineage.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from headrace.errors import DatasetError, UnknownName
from training.datasets.base import DatasetSplits, ImageArrays, RawDataset
from training.datasets.cifar10 import load_cifar10
from training.datasets.digits import SAMPLES as DIGITS_SAMPLES
from training.datasets.digits import load_digits_28
from training.datasets.mnist import load_mnist
from training.datasets.schema import SCHEMAS, DatasetSchema, dataset_schema
from training.datasets.shards import Lineage, ShardSource, select_shards, unread_root
from training.datasets.split_cache import cached_split

__all__ = [
    "DATASETS",
    "SCHEMAS",
    "DatasetSchema",
    "DatasetSplits",
    "ImageArrays",
    "RawDataset",
    "ShardSource",
    "dataset_schema",
    "load_raw",
    "lineage_splits",
    "load_splits",
    "split_raw",
    "train_split_size",
    "unread_data_dir",
    "unread_root",
]

MIN_SHARD_RECORDS = 20

# name -> (loader, needs a data folder)
DATASETS: dict[str, tuple[Callable[..., RawDataset], bool]] = {
    "digits": (load_digits_28, False),
    "mnist": (load_mnist, True),
    "cifar10": (load_cifar10, True),
}
EMBEDDED_SIZES: dict[str, int] = {"digits": DIGITS_SAMPLES}
"""Images of the datasets whose size is known before they are read (not those read from files)."""


def unread_folder(dataset: str, flag: str) -> str | None:
    """Why a data folder named by `flag` would go unread with `dataset`: it is embedded (a
    user who left out `--dataset mnist` trained on digits). None if the dataset reads files
    or is unknown (refused elsewhere)."""
    if dataset not in DATASETS or DATASETS[dataset][1]:
        return None
    files = " or ".join(name for name, (_, reads) in DATASETS.items() if reads)
    return (
        f"{flag}: dataset {dataset!r} is embedded and reads no folder; name a dataset read "
        f"from files ({files}) or leave {flag} out"
    )


def unread_data_dir(lineage: Lineage, what: str) -> str | None:
    """Why a --data-dir given for the published version `what` (e.g. `m:2`) would go unread:
    it was trained on ingested shards (read from a data root) or on an embedded dataset. None
    if its dataset is read from a folder of files."""
    if lineage.get("data_source") == "shards":
        return (
            f"--data-dir: {what} was trained on ingested shards of the "
            f"{lineage.get('dataset') or 'digits'} dataset, read from the data root "
            "(--data-root), not from a folder of files; leave --data-dir out"
        )
    return unread_folder(str(lineage.get("dataset") or "digits"), "--data-dir")


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
    counts = np.bincount(arrays.labels)
    classes = int((counts > 0).sum())
    held_count = _held_count(fraction, len(arrays))
    # stratifying needs two samples per class and room for every class on both sides
    fits = bool(counts[counts > 0].min() >= 2 and classes <= held_count <= len(arrays) - classes)

    def compute() -> tuple[np.ndarray, np.ndarray]:
        from sklearn.model_selection import train_test_split  # ~2 s to import: cached

        keep, held = train_test_split(
            np.arange(len(arrays)),
            test_size=fraction,
            random_state=seed,
            stratify=arrays.labels if fits else None,
        )
        return np.sort(keep), np.sort(held)

    keep, held = cached_split(arrays.labels, fraction, seed, fits, compute)
    return arrays.subset(keep), arrays.subset(held)


def _held_count(fraction: float, total: int) -> int:
    """Rows `_stratified_split` splits off `total` (as train_test_split rounds)."""
    return math.ceil(fraction * total)


def train_split_size(
    name: str, val_fraction: float, test_fraction: float, source: ShardSource | None = None
) -> int | None:
    """Images in the train split `load_splits` would give, known without loading the dataset:
    for an embedded dataset only; None for one read from files or shards (known once read)."""
    total = EMBEDDED_SIZES.get(name)
    if total is None or source is not None:
        return None
    pool = total - _held_count(test_fraction, total)  # no official test part
    return pool - _held_count(val_fraction, pool)


def split_raw(
    raw: RawDataset, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> DatasetSplits:
    """Deterministic splits: the official test part when there is one, else `test_fraction`."""
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1:
        raise DatasetError("val and test fractions must be between 0 and 1")
    _check_sizes(raw, val_fraction, test_fraction)
    if raw.official_test is not None:
        pool, test = raw.data, raw.official_test
    else:
        pool, test = _stratified_split(raw.data, test_fraction, seed)
    train, val = _stratified_split(pool, val_fraction, seed)
    return DatasetSplits(name=raw.name, classes=raw.classes, train=train, val=val, test=test)


def _split_sizes(
    total: int, tested: int | None, val_fraction: float, test_fraction: float
) -> tuple[int, int, int]:
    """(train, val, test) images of `total` (plus `tested` in an official test part)."""
    test = _held_count(test_fraction, total) if tested is None else tested
    pool = total - (test if tested is None else 0)
    val = _held_count(val_fraction, pool)
    return pool - val, val, test


def _check_sizes(raw: RawDataset, val_fraction: float, test_fraction: float) -> None:
    """DatasetError when a split would be empty: 0, 1 or 2 images (a folder of a few files)
    ended in a scikit-learn or numpy traceback."""
    tested = None if raw.official_test is None else len(raw.official_test)
    sizes = _split_sizes(len(raw.data), tested, val_fraction, test_fraction)
    if min(sizes) > 0:
        return
    if tested == 0:
        raise DatasetError(
            f"dataset {raw.name!r}: its test part holds no images; add them, or remove the "
            "test files to split a test set off the training images"
        )
    least = next(
        n for n in range(1, 1_000_000) if min(_split_sizes(n, tested, val_fraction, test_fraction))
    )
    train, val, test = sizes
    raise DatasetError(
        f"dataset {raw.name!r} holds {len(raw.data)} images: too few to split into training, "
        f"validation and test images ({train}, {val} and {test}); it needs at least {least}"
    )


def load_splits(
    name: str,
    data_dir: Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    source: ShardSource | None = None,
) -> DatasetSplits:
    """Load a dataset by name (from its shards with `source`) and split it by `seed`."""
    if source is None:
        return split_raw(load_raw(name, data_dir), seed, val_fraction, test_fraction)
    schema = dataset_schema(name)
    selection = select_shards(name, schema, source)
    if len(selection.rows) < MIN_SHARD_RECORDS:
        raise DatasetError(
            f"only {len(selection.rows)} records selected from the shards of {name!r}; training "
            f"needs at least {MIN_SHARD_RECORDS} to split off validation and test records"
        )
    raw = RawDataset(name=name, classes=schema.classes, data=selection.arrays)
    splits = split_raw(raw, seed, val_fraction, test_fraction)
    return dataclasses.replace(splits, lineage=selection.lineage())


def lineage_splits(
    lineage: Lineage, data_dir: Path | None = None, data_root: Path | None = None
) -> DatasetSplits:
    """The splits a published version was trained on, rebuilt from its lineage: its dataset
    (or the same selection of ingested shards, read from `data_root`), seed and fractions
    (the defaults where the lineage lacks one), so its test split holds no training image."""

    def number(key: str, default: float) -> float:
        value = lineage.get(key)
        return default if value is None else float(value)

    return load_splits(
        str(lineage.get("dataset") or "digits"),
        data_dir,
        int(number("seed", 0)),
        number("val_fraction", 0.1),
        number("test_fraction", 0.1),
        source=ShardSource.from_lineage(lineage, data_root),
    )
