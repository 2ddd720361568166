"""The embedded default dataset: scikit-learn's handwritten digits at 28x28.

scikit-learn ships the 1,797 8x8 images (values 0..16) inside its package as a
small CSV, so this works with no download and no data folder. The file is read
straight from the installed package, the same values `sklearn.datasets.
load_digits` returns, without importing scikit-learn (and SciPy behind it),
which would cost about two seconds in every process that loads the dataset;
if the file is not where it is expected, scikit-learn's loader is used.
Images are resized with bilinear interpolation to MNIST's 28x28 and scaled to
0..255.
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
SAMPLES = 1797
"""Images in the dataset, known without reading it (checks of a config use it)."""


def digits_csv() -> Path | None:
    """The digits CSV inside the installed scikit-learn package, found without importing it
    (None if this scikit-learn keeps it elsewhere)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the digits dataset comes with scikit-learn: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*PACKAGE_FILE)
    return path if path.is_file() else None


def _digits_table() -> np.ndarray:
    """(1797, 65) integers: 64 pixels (0..16) and the label per row."""
    path = digits_csv()
    if path is None:  # another layout: scikit-learn's loader, at the cost of its import
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return np.column_stack([bunch.data.astype(np.int64), bunch.target.astype(np.int64)])
    with gzip.open(path, "rt") as table_file:
        return np.loadtxt(table_file, delimiter=",", dtype=np.int64, ndmin=2)


def load_digits_28() -> RawDataset:
    """All digits images as uint8 (N, 1, 28, 28) with their labels."""
    # imported here: the dataset registry (and the schemas beside it) load without torch
    import torch
    import torch.nn.functional as F

    table = _digits_table()
    pixels = SOURCE_SIZE * SOURCE_SIZE
    small = table[:, :pixels].reshape(-1, 1, SOURCE_SIZE, SOURCE_SIZE) / SOURCE_MAX
    large = F.interpolate(
        torch.from_numpy(small.astype(np.float32)),
        size=(IMAGE_SIZE, IMAGE_SIZE),
        mode="bilinear",
        align_corners=False,
    )
    images = (large.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    return RawDataset(
        name="digits",
        classes=tuple(str(d) for d in range(10)),
        data=ImageArrays(images, table[:, pixels].astype(np.int64)),
    )
