"""Unit tests of the embedded digits dataset and of the split cache.

The digits CSV is read from the installed scikit-learn package without
importing it, and must give exactly what `sklearn.datasets.load_digits`
resized with torch gives. Split indices are memoised on disk: a cached split
equals scikit-learn's `train_test_split`, a warm cache spares the process the
scikit-learn import, and a damaged cache file is recomputed, not trusted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.datasets import digits, load_splits
from training.datasets.digits import IMAGE_SIZE, load_digits_28
from training.datasets.split_cache import CACHE_ENV, cache_dir

pytestmark = pytest.mark.unit
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def split_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def test_images_and_labels_are_scikit_learns_resized_by_torch() -> None:
    from sklearn.datasets import load_digits

    reference = load_digits()
    small = torch.from_numpy(reference.images.astype(np.float32) / 16.0).unsqueeze(1)
    large = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    expected = (large.clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    raw = load_digits_28()
    np.testing.assert_array_equal(raw.data.images, expected)
    np.testing.assert_array_equal(raw.data.labels, reference.target)


def test_without_the_csv_file_scikit_learns_loader_gives_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from_file = load_digits_28()
    monkeypatch.setattr(digits, "digits_csv", lambda: None)
    from_loader = load_digits_28()
    np.testing.assert_array_equal(from_file.data.images, from_loader.data.images)
    np.testing.assert_array_equal(from_file.data.labels, from_loader.data.labels)


def test_cached_split_is_scikit_learns_and_is_written_once(split_cache: Path) -> None:
    from sklearn.model_selection import train_test_split

    cold = load_splits("digits", seed=5)
    files = sorted((split_cache / "splits").iterdir())
    warm = load_splits("digits", seed=5)

    assert len(files) == 2  # test split of the whole set, then validation split of the rest
    assert sorted((split_cache / "splits").iterdir()) == files
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(cold, part).images, getattr(warm, part).images)
    labels = load_digits_28().data.labels
    _, held = train_test_split(
        np.arange(len(labels)), test_size=0.1, random_state=5, stratify=labels
    )
    np.testing.assert_array_equal(cold.test.labels, labels[np.sort(held)])


def test_warm_cache_spares_the_scikit_learn_import(split_cache: Path) -> None:
    load_splits("digits", seed=0)  # fills the cache
    code = (
        "import sys; from training.datasets import load_splits; load_splits('digits'); "
        "print(sorted(m for m in ('sklearn', 'scipy.stats') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("damage", [b"", b"not an npz file", "wrong sizes", "out of range"])
def test_a_damaged_cache_file_is_recomputed(split_cache: Path, damage: bytes | str) -> None:
    first = load_splits("digits", seed=2)
    for path in (split_cache / "splits").iterdir():
        if damage == "wrong sizes":
            np.savez(path.open("wb"), keep=np.arange(3), held=np.arange(3, 5))
        elif damage == "out of range":  # the right sizes, every index one too high
            with np.load(path) as stored:
                keep, held = stored["keep"] + 1, stored["held"] + 1
            np.savez(path.open("wb"), keep=keep, held=held)
        else:
            path.write_bytes(damage)  # type: ignore[arg-type]
    again = load_splits("digits", seed=2)
    np.testing.assert_array_equal(first.test.labels, again.test.labels)
    np.testing.assert_array_equal(first.train.images, again.train.images)


def test_an_unwritable_cache_folder_only_costs_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    splits = load_splits("digits", seed=0)
    assert len(splits.test) == 180


def test_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert cache_dir() == Path("/somewhere/headrace")
    monkeypatch.setenv(CACHE_ENV, "/elsewhere")
    assert cache_dir() == Path("/elsewhere")
