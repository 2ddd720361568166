"""An on-disk memo of split indices, so most processes need not import scikit-learn.

Splits come from scikit-learn's `train_test_split`, whose import (SciPy behind
it) costs about two seconds: paid by every CLI command, NNI trial and Ray
worker that loads a dataset. A split is a pure function of the labels, the
fraction, the seed and scikit-learn's version, so its indices are kept in a
small file named by a hash of exactly those, under `HEADRACE_CACHE_DIR`
(default `$XDG_CACHE_HOME/headrace`, else `~/.cache/headrace`). A missing,
unreadable or unwritable cache only means the split is computed again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
CACHE_ENV = "HEADRACE_CACHE_DIR"
FORMAT = b"headrace-split-v1"

Indices = tuple[np.ndarray, np.ndarray]


def cache_dir() -> Path:
    """Where split files go: `HEADRACE_CACHE_DIR`, else the user's cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "headrace"


def _key(labels: np.ndarray, fraction: float, seed: int, stratify: bool) -> str:
    digest = hashlib.sha256(FORMAT)
    digest.update(importlib.metadata.version("scikit-learn").encode())
    digest.update(f"|{fraction!r}|{seed}|{stratify}|{labels.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()[:40]


def _read(path: Path, total: int) -> Indices | None:
    try:
        with np.load(path) as stored:
            keep, held = stored["keep"], stored["held"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        if path.exists():
            log.debug("ignoring unreadable split cache %s: %s", path, exc)
        return None
    # a split puts each of the rows 0..total-1 on exactly one side
    if len(keep) + len(held) != total or not np.array_equal(
        np.union1d(keep, held), np.arange(total)
    ):
        return None
    return keep, held


def _write(path: Path, keep: np.ndarray, held: np.ndarray) -> None:
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as out:
            temporary = out.name
            np.savez(out, keep=keep, held=held)
        os.replace(temporary, path)  # atomic: a concurrent reader sees all of it or nothing
    except OSError as exc:
        log.debug("split cache not written to %s: %s", path, exc)
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)  # a full disk leaves no half-written file


def cached_split(
    labels: np.ndarray, fraction: float, seed: int, stratify: bool, compute: Callable[[], Indices]
) -> Indices:
    """`compute()`'s (keep, held) indices for these inputs, from the cache when it has them."""
    path = cache_dir() / "splits" / f"{_key(labels, fraction, seed, stratify)}.npz"
    found = _read(path, len(labels))
    if found is not None:
        return found
    keep, held = compute()
    _write(path, keep, held)
    return keep, held
