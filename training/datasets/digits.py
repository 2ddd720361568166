"""The embedded default dataset: scikit-learn's handwritten digits at 28x28.

scikit-learn ships the 1,797 8x8 images (values 0..16) inside its package as a
small CSV, so this works with no download and no data folder. The file is read
straight from the installed package: importing scikit-learn (and SciPy behind
it) would cost about two seconds in every process that loads the dataset.
Images are resized with bilinear interpolation (half-pixel centres, as
`torch.nn.functional.interpolate(..., align_corners=False)`) to MNIST's 28x28
and scaled to 0..255.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from headrace.errors import DatasetError
from training.datasets.base import ImageArrays, RawDataset

IMAGE_SIZE = 28
SOURCE_SIZE = 8
SOURCE_MAX = 16.0
PACKAGE_FILE = ("datasets", "data", "digits.csv.gz")


def digits_csv() -> Path:
    """The digits CSV inside the installed scikit-learn package (found without importing it)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the digits dataset comes with scikit-learn: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*PACKAGE_FILE)
    if not path.is_file():
        raise DatasetError(f"scikit-learn's digits file is missing: {path}")
    return path


def _linear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output position: the two source positions and the weight of the second."""
    scale = np.float32(size_in / size_out)
    centre = scale * (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    source = np.maximum(centre, np.float32(0.0))
    low = source.astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (source - low).astype(np.float32)


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Float images (N, H, W) resized to (N, size, size) by bilinear interpolation."""
    rows_low, rows_high, row_weight = _linear_taps(images.shape[1], size)
    cols_low, cols_high, col_weight = _linear_taps(images.shape[2], size)
    row_weight = row_weight[None, :, None]
    rows = images[:, rows_low, :] * (1 - row_weight) + images[:, rows_high, :] * row_weight
    return rows[:, :, cols_low] * (1 - col_weight) + rows[:, :, cols_high] * col_weight


def load_digits_28() -> RawDataset:
    """All digits images as uint8 (N, 1, 28, 28) with their labels."""
    with gzip.open(digits_csv(), "rt") as table_file:
        table = np.loadtxt(table_file, delimiter=",", dtype=np.int64, ndmin=2)
    pixels = SOURCE_SIZE * SOURCE_SIZE
    small = table[:, :pixels].reshape(-1, SOURCE_SIZE, SOURCE_SIZE) / np.float32(SOURCE_MAX)
    large = resize_bilinear(small.astype(np.float32), IMAGE_SIZE)
    images = np.rint(np.clip(large, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
    return RawDataset(
        name="digits",
        classes=tuple(str(d) for d in range(10)),
        data=ImageArrays(images[:, None], table[:, pixels].astype(np.int64)),
    )
