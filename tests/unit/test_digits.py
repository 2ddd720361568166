"""Unit tests of the embedded digits dataset: read without scikit-learn, resized like torch.

The CSV is read from the installed scikit-learn package without importing it;
the 8x8 images must equal scikit-learn's own `load_digits`, and the bilinear
resize must agree with `torch.nn.functional.interpolate` to within one grey
level. Splits keep every class's share of the held-out rows.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.datasets import load_splits
from training.datasets.digits import IMAGE_SIZE, load_digits_28, resize_bilinear

pytestmark = pytest.mark.unit


def test_images_and_labels_are_scikit_learns_resized() -> None:
    from sklearn.datasets import load_digits

    reference = load_digits()
    raw = load_digits_28()
    small = torch.from_numpy(reference.images.astype(np.float32) / 16.0).unsqueeze(1)
    large = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    expected = (large.clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    assert raw.data.images.shape == (1797, 1, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_array_equal(raw.data.labels, reference.target)
    difference = np.abs(raw.data.images.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1  # float rounding order differs from torch's kernel
    assert (difference > 0).mean() < 1e-4


def test_resize_keeps_constant_images_and_corners() -> None:
    ramp = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    out = resize_bilinear(ramp, 8)
    assert out.shape == (1, 8, 8)
    assert out[0, 0, 0] == ramp[0, 0, 0] and out[0, -1, -1] == ramp[0, -1, -1]
    np.testing.assert_allclose(resize_bilinear(np.full((2, 3, 3), 0.25, np.float32), 7), 0.25)
    assert np.all(np.diff(out[0], axis=1) >= 0)  # a ramp stays a ramp


def test_loading_digits_imports_neither_scikit_learn_nor_torch() -> None:
    code = (
        "import sys; from training.datasets import load_splits; load_splits('digits'); "
        "print(sorted(m for m in ('sklearn', 'scipy.stats', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_class_gives_its_share_to_validation_and_test() -> None:
    splits = load_splits("digits", seed=3)
    total = len(splits.train) + len(splits.val) + len(splits.test)
    all_labels = np.concatenate([splits.train.labels, splits.val.labels, splits.test.labels])
    counts = np.bincount(all_labels)
    assert len(splits.test) == int(np.ceil(0.1 * total))
    share = len(splits.test) * counts / total
    assert np.all(np.abs(np.bincount(splits.test.labels, minlength=10) - share) < 1)
    pool = counts - np.bincount(splits.test.labels, minlength=10)
    val_share = len(splits.val) * pool / pool.sum()
    assert np.all(np.abs(np.bincount(splits.val.labels, minlength=10) - val_share) < 1)
