"""The `mnist` loader: MNIST images and labels read from a folder of IDX files.

The folder holds the standard file names, each plain or gzipped (`.gz`):
`train-images-idx3-ubyte` / `train-labels-idx1-ubyte` (the training pair) and
`t10k-images-idx3-ubyte` / `t10k-labels-idx1-ubyte` (the official test pair).
With both pairs, the training pair is `data` and the t10k pair the official
test part; with one pair, that pair is `data`. The IDX format is parsed here
with numpy: two zero bytes, a dtype byte (0x08 = unsigned byte), a dims byte,
then one big-endian int32 per dim, then the values. Every defect is a
`DatasetError` that names the file and says what was expected.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from headrace.errors import DatasetError
from training.datasets.base import ImageArrays, RawDataset

IMAGE_SIZE = 28
NUM_CLASSES = 10
UBYTE = 0x08
PREFIXES = ("train", "t10k")
GZIP_SUFFIX = ".gz"
GZIP_MAGIC = b"\x1f\x8b"


def images_name(prefix: str) -> str:
    """The standard (uncompressed) file name of a split's images."""
    return f"{prefix}-images-idx3-ubyte"


def labels_name(prefix: str) -> str:
    """The standard (uncompressed) file name of a split's labels."""
    return f"{prefix}-labels-idx1-ubyte"


def expected_names() -> list[str]:
    """Every file name the loader looks for (each may also end in `.gz`)."""
    return [name for p in PREFIXES for name in (images_name(p), labels_name(p))]


def _find(data_dir: Path, name: str) -> Path | None:
    """`name` or `name.gz` in `data_dir`; the plain file wins when both exist."""
    for candidate in (data_dir / name, data_dir / (name + GZIP_SUFFIX)):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    """The file's contents, decompressed if it ends in `.gz`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read MNIST file {path}: {exc}") from exc
    if path.suffix != GZIP_SUFFIX:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"MNIST file {path} is not a valid gzip stream ({exc}); "
            "download it again or store it uncompressed without the .gz suffix"
        ) from exc


def _parse_header(path: Path, buf: bytes, ndim: int) -> tuple[int, ...]:
    """Check the IDX magic number and return the dims it declares."""
    if len(buf) < 4:
        raise DatasetError(
            f"MNIST file {path} is truncated: {len(buf)} bytes, too short for an IDX header"
        )
    if buf[0] != 0 or buf[1] != 0:
        hint = "; it looks gzipped: name it with a .gz suffix" if buf[:2] == GZIP_MAGIC else ""
        raise DatasetError(
            f"MNIST file {path} has a bad magic number {buf[:4].hex()}: "
            f"an IDX file starts with two zero bytes{hint}"
        )
    if buf[2] != UBYTE:
        raise DatasetError(
            f"MNIST file {path} has IDX dtype 0x{buf[2]:02x}; expected 0x08 (unsigned byte)"
        )
    if buf[3] != ndim:
        raise DatasetError(f"MNIST file {path} has {buf[3]} dims; expected {ndim}")
    header_size = 4 + 4 * ndim
    if len(buf) < header_size:
        raise DatasetError(
            f"MNIST file {path} is truncated: {len(buf)} bytes, "
            f"too short for an IDX header of {header_size} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">i4", count=ndim, offset=4))
    if any(d < 0 for d in dims):
        raise DatasetError(f"MNIST file {path} declares negative dims {dims}")
    return dims


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array stored in an IDX file with `ndim` dims."""
    buf = _read_bytes(path)
    dims = _parse_header(path, buf, ndim)
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(buf) - offset
    if actual < expected:
        raise DatasetError(
            f"MNIST file {path} is truncated: the header promises {expected} values "
            f"of shape {dims} but only {actual} bytes follow"
        )
    if actual > expected:
        raise DatasetError(
            f"MNIST file {path} has {actual - expected} bytes of trailing garbage after "
            f"the {expected} values of shape {dims} its header declares"
        )
    return np.frombuffer(buf, dtype=np.uint8, count=expected, offset=offset).reshape(dims)


def _read_images(path: Path) -> np.ndarray:
    """Images as uint8 (N, 1, 28, 28)."""
    images = _read_idx(path, ndim=3)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetError(
            f"MNIST file {path} holds images of {images.shape[1]}x{images.shape[2]}; "
            f"expected {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    return images.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE).copy()


def _read_labels(path: Path) -> np.ndarray:
    """Labels as int64 (N,), each in 0..9."""
    labels = _read_idx(path, ndim=1)
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        bad = int(labels.max())
        raise DatasetError(
            f"MNIST file {path} holds label {bad}; expected labels 0..{NUM_CLASSES - 1}"
        )
    return labels.astype(np.int64)


def _load_pair(images_path: Path, labels_path: Path) -> ImageArrays:
    """One split from its images and labels files."""
    images = _read_images(images_path)
    labels = _read_labels(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"mislabelled size: {images_path} holds {images.shape[0]} images but "
            f"{labels_path} holds {labels.shape[0]} labels; expected one label per image"
        )
    return ImageArrays(images, labels)


def _find_pair(data_dir: Path, prefix: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of `prefix`, None if neither exists."""
    images_path = _find(data_dir, images_name(prefix))
    labels_path = _find(data_dir, labels_name(prefix))
    if images_path is None and labels_path is None:
        return None
    if images_path is None:
        raise DatasetError(
            f"MNIST folder {data_dir} has {labels_path} but not its images file "
            f"{images_name(prefix)} (or {images_name(prefix)}{GZIP_SUFFIX})"
        )
    if labels_path is None:
        raise DatasetError(
            f"MNIST folder {data_dir} has {images_path} but not its labels file "
            f"{labels_name(prefix)} (or {labels_name(prefix)}{GZIP_SUFFIX})"
        )
    return images_path, labels_path


def _check_folder(data_dir: Path) -> None:
    if not data_dir.exists():
        raise DatasetError(f"MNIST folder {data_dir} does not exist")
    if not data_dir.is_dir():
        raise DatasetError(f"MNIST data dir {data_dir} is not a folder")


def load_mnist(data_dir: Path) -> RawDataset:
    """MNIST from `data_dir`: the train pair as data and t10k as official test, or one pair."""
    data_dir = Path(data_dir)
    _check_folder(data_dir)
    pairs = {prefix: _find_pair(data_dir, prefix) for prefix in PREFIXES}
    found = [pair for pair in pairs.values() if pair is not None]
    if not found:
        raise DatasetError(
            f"MNIST folder {data_dir} holds none of the expected files: "
            f"{', '.join(expected_names())} (each optionally gzipped as .gz); "
            "it needs the train pair, the t10k pair, or both"
        )
    data = _load_pair(*found[0])
    official_test = _load_pair(*found[1]) if len(found) == 2 else None
    return RawDataset(
        name="mnist",
        classes=tuple(str(d) for d in range(NUM_CLASSES)),
        data=data,
        official_test=official_test,
    )
