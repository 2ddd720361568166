"""The `cifar10` loader: CIFAR-10 images read from the "python version" pickle batches.

The folder (or its `cifar-10-batches-py` subfolder) holds any of
`data_batch_1` .. `data_batch_5` (together the data) and `test_batch` (the
official test part), plus an optional `batches.meta` with the class names.
Each batch is a pickled dict: `b"data"`, uint8 (N, 3072) rows of R, G, B
32x32 planes, and `b"labels"`, N ints in 0..9.

The batches come from users, and a pickle can run any code while it loads, so
they are read with an unpickler that resolves only the few numpy globals a
plain array needs and refuses every other global. Every defect is a
`DatasetError` that names the file.
"""

from __future__ import annotations

import functools
import importlib
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from headrace.errors import DatasetError
from training.datasets.base import ImageArrays, RawDataset

IMAGE_SIZE = 32
CHANNELS = 3
ROW_LENGTH = CHANNELS * IMAGE_SIZE * IMAGE_SIZE
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
SUBFOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
DEFAULT_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _numpy_global(name: str, modules: tuple[str, ...]) -> Any:
    """`name` from the first of `modules` that has it (numpy 2 moved `core` to `_core`)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


def _latin1_encode(text: object, encoding: object) -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes, limited to latin-1 text."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only as encode(str, 'latin1')")
    return text.encode("latin-1")


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a batch pickle may name: what a plain numpy array needs."""
    reconstruct = _numpy_global("_reconstruct", ("numpy._core.multiarray", "numpy.core.multiarray"))
    frombuffer = _numpy_global("_frombuffer", ("numpy._core.numeric", "numpy.core.numeric"))
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy._core", "numpy.core"):
        if reconstruct is not None:
            allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        if frombuffer is not None:
            allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, lists, dicts, bytes and numbers, nothing else."""

    def __init__(self, file: IO[bytes], path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str, /) -> Any:
        allowed = _allowed_globals().get((module, name))
        if allowed is None:
            raise DatasetError(
                f"CIFAR-10 file {self.path} refers to {module}.{name}, which a batch file "
                "never needs; refusing to load it (a pickle can run code). A batch may hold "
                "only numpy arrays, lists, bytes and numbers"
            )
        return allowed


def load_pickle(path: Path) -> object:
    """The object in a batch file, through `RestrictedUnpickler`."""
    try:
        with path.open("rb") as f:
            obj = RestrictedUnpickler(f, path).load()
            trailing = f.read(1)
    except DatasetError:
        raise
    except Exception as exc:  # a corrupt pickle can fail in many ways; all mean the same
        raise DatasetError(
            f"CIFAR-10 file {path} is truncated or not a valid pickle "
            f"({type(exc).__name__}: {exc}); download it again"
        ) from exc
    if trailing:
        raise DatasetError(f"CIFAR-10 file {path} has trailing bytes after its pickle")
    return obj


def _get(batch: dict[Any, Any], key: str) -> Any:
    """`batch[b"key"]`, or `batch["key"]` for a batch written with str keys."""
    return batch[key.encode()] if key.encode() in batch else batch.get(key)


def _as_dict(path: Path, obj: object) -> dict[Any, Any]:
    """The batch as a dict that has both keys."""
    if not isinstance(obj, dict):
        raise DatasetError(
            f"CIFAR-10 file {path} holds a {type(obj).__name__}; "
            "expected a dict with keys b'data' and b'labels'"
        )
    missing = [key for key in ("data", "labels") if _get(obj, key) is None]
    if missing:
        names = ", ".join(f"b'{key}'" for key in missing)
        raise DatasetError(
            f"CIFAR-10 file {path} is missing key(s) {names}; "
            "expected a dict with keys b'data' and b'labels'"
        )
    return obj


def _images(path: Path, data: object) -> np.ndarray:
    """`b"data"` as uint8 (N, 3, 32, 32)."""
    if not isinstance(data, np.ndarray):
        raise DatasetError(
            f"CIFAR-10 file {path}: b'data' is a {type(data).__name__}; expected a numpy array"
        )
    if data.dtype != np.uint8:
        raise DatasetError(f"CIFAR-10 file {path}: b'data' has dtype {data.dtype}; expected uint8")
    if data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        raise DatasetError(
            f"CIFAR-10 file {path}: b'data' has shape {data.shape}; "
            f"expected (N, {ROW_LENGTH}) rows of 3 planes of {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    return data.reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)


def _labels(path: Path, raw: object, count: int) -> np.ndarray:
    """`b"labels"` as int64 (count,), each in 0..9."""
    if not isinstance(raw, list | tuple | np.ndarray):
        raise DatasetError(
            f"CIFAR-10 file {path}: b'labels' is a {type(raw).__name__}; expected a list of ints"
        )
    try:
        labels = np.asarray(raw) if len(raw) else np.zeros(0, dtype=np.int64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DatasetError(f"CIFAR-10 file {path}: b'labels' is not a list of ints") from exc
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"CIFAR-10 file {path}: b'labels' is not a flat list of ints")
    if labels.shape[0] != count:
        raise DatasetError(
            f"CIFAR-10 file {path} holds {count} images but {labels.shape[0]} labels; "
            "expected one label per image"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(DEFAULT_CLASSES)):
        bad = labels[(labels < 0) | (labels >= len(DEFAULT_CLASSES))][0]
        raise DatasetError(
            f"CIFAR-10 file {path} holds label {bad}; expected labels 0..{len(DEFAULT_CLASSES) - 1}"
        )
    return labels.astype(np.int64)


def load_batch(path: Path) -> ImageArrays:
    """One batch file as images (N, 3, 32, 32) and labels."""
    batch = _as_dict(path, load_pickle(path))
    images = _images(path, _get(batch, "data"))
    labels = _labels(path, _get(batch, "labels"), images.shape[0])
    return ImageArrays(images, labels)


def _class_names(folder: Path) -> tuple[str, ...]:
    """Names from `batches.meta` when present, else the standard ten."""
    path = folder / META_FILE
    if not path.is_file():
        return DEFAULT_CLASSES
    meta = load_pickle(path)
    names = _get(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list | tuple) or len(names) != len(DEFAULT_CLASSES):
        raise DatasetError(
            f"CIFAR-10 file {path} has no list of {len(DEFAULT_CLASSES)} b'label_names'; "
            "fix or delete it (the standard names are used without it)"
        )
    try:
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"CIFAR-10 file {path} has label names that are not UTF-8") from exc


def _batch_folder(data_dir: Path) -> Path:
    """`data_dir`, or its `cifar-10-batches-py` subfolder when the batches are there."""
    if not data_dir.exists():
        raise DatasetError(f"CIFAR-10 folder {data_dir} does not exist")
    if not data_dir.is_dir():
        raise DatasetError(f"CIFAR-10 data dir {data_dir} is not a folder")
    names = (*TRAIN_BATCHES, TEST_BATCH)
    for folder in (data_dir, data_dir / SUBFOLDER):
        if any((folder / name).is_file() for name in names):
            return folder
    hint = f"; extract {ARCHIVE} first" if (data_dir / ARCHIVE).exists() else ""
    raise DatasetError(
        f"CIFAR-10 folder {data_dir} holds none of the expected batch files: "
        f"{', '.join(names)} (directly or in a {SUBFOLDER} subfolder){hint}"
    )


def _concatenate(parts: list[ImageArrays]) -> ImageArrays:
    if len(parts) == 1:
        return parts[0]
    images = np.concatenate([p.images for p in parts])
    return ImageArrays(images, np.concatenate([p.labels for p in parts]))


def _read_batches(folder: Path, names: tuple[str, ...]) -> list[ImageArrays]:
    return [load_batch(folder / name) for name in names if (folder / name).is_file()]


def load_cifar10(data_dir: Path) -> RawDataset:
    """CIFAR-10 from `data_dir`: training batches as data, `test_batch` as official test."""
    folder = _batch_folder(Path(data_dir))
    train = _read_batches(folder, TRAIN_BATCHES)
    test = _read_batches(folder, (TEST_BATCH,))
    classes = _class_names(folder)
    if train:
        data, official_test = _concatenate(train), (test[0] if test else None)
    else:
        data, official_test = test[0], None
    return RawDataset(name="cifar10", classes=classes, data=data, official_test=official_test)
