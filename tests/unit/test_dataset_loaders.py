"""Unit tests of the file-based dataset loaders (`mnist`, `cifar10`) and of deterministic splits.

The tests write small files of the real formats (IDX, gzipped or not; CIFAR-10
pickle batches) into `tmp_path` and check values, shapes, which part becomes
the official test set, and that every malformed input is a `DatasetError`
naming the file. A CIFAR-10 pickle that carries code must be refused before it
runs. No network; the real MNIST test set is used only when the shared data
folder holds it.
"""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace.errors import DatasetError
from training.datasets import load_raw, load_splits, split_raw
from training.datasets.base import DatasetSplits, ImageArrays, RawDataset
from training.datasets.cifar10 import DEFAULT_CLASSES, load_cifar10
from training.datasets.mnist import expected_names, load_mnist

pytestmark = pytest.mark.unit

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
MNIST_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
MNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --- MNIST helpers -------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, dtype_byte: int = 0x08) -> bytes:
    """`array` encoded as an IDX file."""
    header = bytes([0, 0, dtype_byte, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_bytes(path: Path, payload: bytes, gz: bool = False) -> Path:
    """Write `payload` to `path` (gzipped, with `.gz` appended, when `gz`)."""
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload, compresslevel=1)
    path.write_bytes(payload)
    return path


def mnist_arrays(n: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (n, 28, 28) uint8 images and labels covering 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    return images, labels


def write_mnist_pair(
    folder: Path,
    names: tuple[str, str],
    images: np.ndarray,
    labels: np.ndarray,
    gz: bool = False,
) -> tuple[Path, Path]:
    """Write an images file and a labels file; return their paths."""
    return (
        write_bytes(folder / names[0], idx_bytes(images), gz),
        write_bytes(folder / names[1], idx_bytes(labels), gz),
    )


def raises_naming(path: Path, fn: Callable[[], Any], *fragments: str) -> DatasetError:
    """Assert `fn()` raises DatasetError whose message names `path` and holds `fragments`."""
    with pytest.raises(DatasetError) as info:
        fn()
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# --- MNIST: good folders -------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("names", [MNIST_TRAIN, MNIST_TEST])
def test_mnist_one_pair_round_trips(tmp_path: Path, names: tuple[str, str], gz: bool) -> None:
    images, labels = mnist_arrays()
    write_mnist_pair(tmp_path, names, images, labels, gz)

    raw = load_mnist(tmp_path)

    assert raw.name == "mnist"
    assert raw.classes == tuple(str(d) for d in range(10))
    assert raw.official_test is None
    assert raw.data.images.dtype == np.uint8
    assert raw.data.images.shape == (50, 1, 28, 28)
    assert raw.data.labels.dtype == np.int64
    np.testing.assert_array_equal(raw.data.images[:, 0], images)
    np.testing.assert_array_equal(raw.data.labels, labels.astype(np.int64))


def test_mnist_both_pairs_give_official_test(tmp_path: Path) -> None:
    train_images, train_labels = mnist_arrays(60, seed=1)
    test_images, test_labels = mnist_arrays(40, seed=2)
    write_mnist_pair(tmp_path, MNIST_TRAIN, train_images, train_labels, gz=True)
    write_mnist_pair(tmp_path, MNIST_TEST, test_images, test_labels, gz=False)

    raw = load_mnist(tmp_path)

    assert raw.official_test is not None
    np.testing.assert_array_equal(raw.data.images[:, 0], train_images)
    np.testing.assert_array_equal(raw.data.labels, train_labels)
    np.testing.assert_array_equal(raw.official_test.images[:, 0], test_images)
    np.testing.assert_array_equal(raw.official_test.labels, test_labels)


def test_mnist_loads_10000_images_fast(tmp_path: Path) -> None:
    images, labels = mnist_arrays(10_000, seed=3)
    write_mnist_pair(tmp_path, MNIST_TEST, images, labels, gz=True)

    start = time.perf_counter()
    raw = load_mnist(tmp_path)
    elapsed = time.perf_counter() - start

    assert len(raw.data) == 10_000
    assert elapsed < 1.0, f"loading 10,000 images took {elapsed:.2f} s"


def test_mnist_through_registry_uses_official_test(tmp_path: Path) -> None:
    train_images, train_labels = mnist_arrays(100, seed=4)
    test_images, test_labels = mnist_arrays(30, seed=5)
    write_mnist_pair(tmp_path, MNIST_TRAIN, train_images, train_labels)
    write_mnist_pair(tmp_path, MNIST_TEST, test_images, test_labels)

    splits = load_splits("mnist", data_dir=tmp_path, seed=0)

    np.testing.assert_array_equal(splits.test.images[:, 0], test_images)
    assert len(splits.train) + len(splits.val) == 100
    assert splits.input_shape == (1, 28, 28)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_too_few_images_to_split_are_refused_by_count(tmp_path: Path, count: int) -> None:
    """Before: a folder of 0 images ended in numpy's 'zero-size array to reduction operation
    minimum', of 1 or 2 in scikit-learn's 'the resulting train set will be empty'."""
    write_mnist_pair(tmp_path, MNIST_TRAIN, *mnist_arrays(count))
    expected = rf"holds {count} images: too few to split into training, validation and test"
    with pytest.raises(DatasetError, match=expected + r" images \(.*\); it needs at least 3"):
        load_splits("mnist", data_dir=tmp_path)
    write_mnist_pair(tmp_path, MNIST_TRAIN, *mnist_arrays(3))
    splits = load_splits("mnist", data_dir=tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1, 1, 1)
    write_mnist_pair(tmp_path, MNIST_TEST, *mnist_arrays(0))
    with pytest.raises(DatasetError, match="its test part holds no images"):
        load_splits("mnist", data_dir=tmp_path)


# --- MNIST: bad folders and files ----------------------------------------------------------------


def test_mnist_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    raises_naming(missing, lambda: load_mnist(missing), "does not exist")


def test_mnist_folder_is_a_file(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "file", b"x")
    raises_naming(path, lambda: load_mnist(path), "not a folder")


def test_mnist_empty_folder_lists_expected_names(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here")
    raises_naming(tmp_path, lambda: load_mnist(tmp_path), *expected_names())
    assert set(expected_names()) == set(MNIST_TRAIN + MNIST_TEST)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_images_without_labels(tmp_path: Path, gz: bool) -> None:
    images, _ = mnist_arrays()
    path = write_bytes(tmp_path / MNIST_TRAIN[0], idx_bytes(images), gz)
    raises_naming(path, lambda: load_mnist(tmp_path), MNIST_TRAIN[1])


def test_mnist_labels_without_images(tmp_path: Path) -> None:
    images, labels = mnist_arrays()
    write_mnist_pair(tmp_path, MNIST_TRAIN, images, labels)
    path = write_bytes(tmp_path / MNIST_TEST[1], idx_bytes(labels))
    raises_naming(path, lambda: load_mnist(tmp_path), MNIST_TEST[0])


def _corrupt(payload: bytes, index: int, value: int) -> bytes:
    return payload[:index] + bytes([value]) + payload[index + 1 :]


IMAGES, LABELS = mnist_arrays()
IMAGE_BYTES, LABEL_BYTES = idx_bytes(IMAGES), idx_bytes(LABELS)

# (case, which file is bad, its bytes, message fragment); the other file of the pair stays good
BAD_MNIST_FILES: list[tuple[str, int, bytes, str]] = [
    ("bad magic", 0, _corrupt(IMAGE_BYTES, 0, 0x01), "magic"),
    ("bad magic labels", 1, _corrupt(LABEL_BYTES, 1, 0x08), "magic"),
    ("gzip without .gz", 0, gzip.compress(IMAGE_BYTES), "looks gzipped"),
    ("wrong dtype", 0, idx_bytes(IMAGES, dtype_byte=0x0D), "expected 0x08"),
    ("wrong dtype labels", 1, idx_bytes(LABELS, dtype_byte=0x0C), "expected 0x08"),
    ("images 2-D", 0, idx_bytes(IMAGES.reshape(50, 784)), "expected 3"),
    ("images 4-D", 0, idx_bytes(IMAGES.reshape(50, 1, 28, 28)), "expected 3"),
    ("labels 2-D", 1, idx_bytes(LABELS.reshape(50, 1)), "expected 1"),
    ("images 32x32", 0, idx_bytes(np.zeros((50, 32, 32), np.uint8)), "expected 28x28"),
    ("images 28x14", 0, idx_bytes(IMAGES.reshape(100, 28, 14)), "expected 28x28"),
    ("truncated data", 0, IMAGE_BYTES[:-10], "truncated"),
    ("truncated labels", 1, LABEL_BYTES[:-1], "truncated"),
    ("truncated header", 0, IMAGE_BYTES[:9], "truncated"),
    ("tiny file", 1, b"\x00\x00", "truncated"),
    ("empty file", 0, b"", "truncated"),
    ("trailing garbage", 0, IMAGE_BYTES + b"garbage", "trailing garbage"),
    ("trailing labels", 1, LABEL_BYTES + b"\x00", "trailing garbage"),
    ("fewer labels", 1, idx_bytes(LABELS[:49]), "mislabelled size"),
    ("more images", 0, idx_bytes(np.concatenate([IMAGES, IMAGES[:1]])), "mislabelled size"),
    ("label 10", 1, idx_bytes(np.where(LABELS == 3, 10, LABELS)), "label 10"),
    ("label 255", 1, idx_bytes(np.where(LABELS == 3, 255, LABELS)), "label 255"),
]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("bad_index", "payload", "fragment"),
    [case[1:] for case in BAD_MNIST_FILES],
    ids=[case[0] for case in BAD_MNIST_FILES],
)
def test_mnist_bad_file_names_it(
    tmp_path: Path, bad_index: int, payload: bytes, fragment: str, gz: bool
) -> None:
    good_paths = write_mnist_pair(tmp_path, MNIST_TRAIN, IMAGES, LABELS, gz)
    good_paths[bad_index].unlink()
    bad_path = write_bytes(tmp_path / MNIST_TRAIN[bad_index], payload, gz)
    raises_naming(bad_path, lambda: load_mnist(tmp_path), fragment)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda gz: gz[: len(gz) // 2],  # stream cut short
        lambda gz: gz[:20] + bytes(b ^ 0xFF for b in gz[20:40]) + gz[40:],  # flipped bytes
        lambda gz: b"not gzip at all",
        lambda gz: gz[:-4] + b"\x00\x00\x00\x00",  # wrong length in the trailer
    ],
    ids=["cut", "flipped", "not-gzip", "bad-trailer"],
)
def test_mnist_corrupt_gzip_names_file(tmp_path: Path, mangle: Callable[[bytes], bytes]) -> None:
    images_path, _ = write_mnist_pair(tmp_path, MNIST_TEST, IMAGES, LABELS, gz=True)
    images_path.write_bytes(mangle(images_path.read_bytes()))
    raises_naming(images_path, lambda: load_mnist(tmp_path), "gzip")


def test_mnist_bad_test_pair_fails_even_with_good_train_pair(tmp_path: Path) -> None:
    write_mnist_pair(tmp_path, MNIST_TRAIN, IMAGES, LABELS)
    _, labels_path = write_mnist_pair(tmp_path, MNIST_TEST, IMAGES, LABELS[:10])
    raises_naming(labels_path, lambda: load_mnist(tmp_path), "mislabelled size")


@pytest.mark.skipif(
    not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"the real MNIST test set is not at {SHARED_MNIST} (optional shared data folder)",
)
def test_real_mnist_test_set() -> None:
    start = time.perf_counter()
    raw = load_mnist(SHARED_MNIST)
    elapsed = time.perf_counter() - start

    assert raw.official_test is None
    assert raw.data.images.shape == (10_000, 1, 28, 28)
    assert raw.data.images.dtype == np.uint8
    assert raw.data.labels.dtype == np.int64
    assert raw.data.labels.min() == 0 and raw.data.labels.max() == 9
    counts = np.bincount(raw.data.labels, minlength=10)
    assert (counts > 0).all()
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert elapsed < 1.0, f"loading the MNIST test set took {elapsed:.2f} s"


# --- CIFAR-10 helpers ----------------------------------------------------------------------------


def cifar_batch(n: int = 50, seed: int = 0) -> dict[bytes, Any]:
    """A batch dict as the CIFAR-10 python version stores it."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch 1 of 1",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_pickle(path: Path, obj: object, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def assert_matches_batch(arrays: ImageArrays, batch: dict[bytes, Any]) -> None:
    data = batch[b"data"]
    assert arrays.images.dtype == np.uint8
    assert arrays.images.shape == (data.shape[0], 3, 32, 32)
    assert arrays.labels.dtype == np.int64
    np.testing.assert_array_equal(arrays.images.reshape(-1, 3072), data)
    np.testing.assert_array_equal(arrays.labels, batch[b"labels"])


# --- CIFAR-10: good folders ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_round_trip(tmp_path: Path, protocol: int) -> None:
    batch = cifar_batch()
    write_pickle(tmp_path / "data_batch_1", batch, protocol)

    raw = load_cifar10(tmp_path)

    assert raw.name == "cifar10"
    assert raw.classes == DEFAULT_CLASSES
    assert raw.official_test is None
    assert_matches_batch(raw.data, batch)
    # channel planes: R is the first 1024 values of a row, then G, then B
    np.testing.assert_array_equal(raw.data.images[7, 0].ravel(), batch[b"data"][7, :1024])
    np.testing.assert_array_equal(raw.data.images[7, 2].ravel(), batch[b"data"][7, 2048:])
    np.testing.assert_array_equal(raw.data.images[7, 1, 0], batch[b"data"][7, 1024:1056])


def test_cifar_python2_module_names_load(tmp_path: Path) -> None:
    # The published batches were pickled by Python 2 with numpy 1: `numpy.core.multiarray`.
    batch = cifar_batch()
    payload = pickle.dumps(batch, protocol=2).replace(
        b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"
    )
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in payload
    (tmp_path / "data_batch_1").write_bytes(payload)

    assert_matches_batch(load_cifar10(tmp_path).data, batch)


def test_cifar_all_batches_and_test(tmp_path: Path) -> None:
    batches = [cifar_batch(20, seed=i) for i in range(1, 6)]
    for i, batch in enumerate(batches, start=1):
        write_pickle(tmp_path / f"data_batch_{i}", batch)
    test = cifar_batch(30, seed=9)
    write_pickle(tmp_path / "test_batch", test)

    raw = load_cifar10(tmp_path)

    combined = {
        b"data": np.concatenate([b[b"data"] for b in batches]),
        b"labels": [label for b in batches for label in b[b"labels"]],
    }
    assert_matches_batch(raw.data, combined)
    assert raw.official_test is not None
    assert_matches_batch(raw.official_test, test)


def test_cifar_subset_of_training_batches(tmp_path: Path) -> None:
    first, third = cifar_batch(10, seed=1), cifar_batch(15, seed=3)
    write_pickle(tmp_path / "data_batch_3", third)
    write_pickle(tmp_path / "data_batch_1", first)

    raw = load_cifar10(tmp_path)

    assert raw.official_test is None
    np.testing.assert_array_equal(
        raw.data.images.reshape(-1, 3072), np.concatenate([first[b"data"], third[b"data"]])
    )


def test_cifar_only_test_batch_becomes_data(tmp_path: Path) -> None:
    test = cifar_batch(25)
    write_pickle(tmp_path / "test_batch", test)

    raw = load_cifar10(tmp_path)

    assert raw.official_test is None
    assert_matches_batch(raw.data, test)


def test_cifar_subfolder_and_meta(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch, test = cifar_batch(12, seed=1), cifar_batch(8, seed=2)
    write_pickle(folder / "data_batch_1", batch, protocol=2)
    write_pickle(folder / "test_batch", test, protocol=2)
    names = [f"class_{i}".encode() for i in range(10)]
    meta = {b"num_cases_per_batch": 12, b"label_names": names, b"num_vis": 3072}
    write_pickle(folder / "batches.meta", meta, protocol=2)

    raw = load_cifar10(tmp_path)

    assert raw.classes == tuple(f"class_{i}" for i in range(10))
    assert_matches_batch(raw.data, batch)
    assert raw.official_test is not None
    assert_matches_batch(raw.official_test, test)


# --- CIFAR-10: bad folders and files -------------------------------------------------------------


def test_cifar_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    raises_naming(missing, lambda: load_cifar10(missing), "does not exist")


def test_cifar_empty_folder_lists_expected_names(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    raises_naming(tmp_path, lambda: load_cifar10(tmp_path), *names)


def test_cifar_archive_not_extracted_hint(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    raises_naming(tmp_path, lambda: load_cifar10(tmp_path), "extract cifar-10-python.tar.gz")


def _with(**changes: Any) -> dict[bytes, Any]:
    batch = cifar_batch()
    for key, value in changes.items():
        if value is None:
            del batch[key.encode()]
        else:
            batch[key.encode()] = value
    return batch


GOOD = cifar_batch()
BAD_CIFAR_OBJECTS: list[tuple[str, object, str]] = [
    ("not a dict", [GOOD[b"data"], GOOD[b"labels"]], "expected a dict"),
    ("no labels", _with(labels=None), "b'labels'"),
    ("no data", _with(data=None), "b'data'"),
    ("data 3000 wide", _with(data=np.zeros((50, 3000), np.uint8)), "shape"),
    ("data 3-D", _with(data=GOOD[b"data"].reshape(50, 3, 1024)), "shape"),
    ("data 1-D", _with(data=GOOD[b"data"].ravel()), "shape"),
    ("data float32", _with(data=GOOD[b"data"].astype(np.float32)), "dtype"),
    ("data int64", _with(data=GOOD[b"data"].astype(np.int64)), "dtype"),
    ("data a list", _with(data=GOOD[b"data"].tolist()), "numpy array"),
    ("fewer labels", _with(labels=GOOD[b"labels"][:49]), "49 labels"),
    ("more labels", _with(labels=[*GOOD[b"labels"], 1]), "51 labels"),
    ("label 10", _with(labels=[10, *GOOD[b"labels"][1:]]), "label 10"),
    ("label -1", _with(labels=[*GOOD[b"labels"][:-1], -1]), "label -1"),
    ("float labels", _with(labels=[float(v) for v in GOOD[b"labels"]]), "ints"),
    ("labels a string", _with(labels=b"0" * 50), "list of ints"),
    ("nested labels", _with(labels=[[v] for v in GOOD[b"labels"]]), "ints"),
]


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [case[1:] for case in BAD_CIFAR_OBJECTS],
    ids=[case[0] for case in BAD_CIFAR_OBJECTS],
)
@pytest.mark.parametrize("name", ["data_batch_2", "test_batch"])
def test_cifar_bad_batch_names_it(tmp_path: Path, obj: object, fragment: str, name: str) -> None:
    write_pickle(tmp_path / "data_batch_1", cifar_batch())
    path = write_pickle(tmp_path / name, obj)
    raises_naming(path, lambda: load_cifar10(tmp_path), fragment)


GOOD_PICKLE = pickle.dumps(GOOD, protocol=4)
BAD_CIFAR_BYTES: list[tuple[str, bytes]] = [
    ("truncated", GOOD_PICKLE[: len(GOOD_PICKLE) // 2]),
    ("cut before stop", GOOD_PICKLE[:-1]),
    ("empty", b""),
    ("garbage", b"this is not a pickle at all"),
    ("flipped opcode", GOOD_PICKLE[:2] + b"\xff" + GOOD_PICKLE[3:]),
    ("trailing bytes", GOOD_PICKLE + b"extra"),
    ("gzipped", gzip.compress(GOOD_PICKLE)),
]


@pytest.mark.parametrize(
    "payload", [case[1] for case in BAD_CIFAR_BYTES], ids=[case[0] for case in BAD_CIFAR_BYTES]
)
def test_cifar_corrupt_pickle_names_file(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    raises_naming(path, lambda: load_cifar10(tmp_path))


def test_cifar_bad_meta_names_it(tmp_path: Path) -> None:
    write_pickle(tmp_path / "data_batch_1", cifar_batch())
    path = write_pickle(tmp_path / "batches.meta", {b"label_names": [b"a", b"b"]})
    raises_naming(path, lambda: load_cifar10(tmp_path), "label_names")


# --- CIFAR-10: pickles that carry code -----------------------------------------------------------


class Payload:
    """Pickles as a call of `func(*args)`: what a hostile batch file would hold."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (self.func, self.args)


def _hostile_payloads(marker: Path) -> dict[str, object]:
    touch = f"touch {marker}"
    create = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Payload(os.system, touch),
        "builtins.eval": Payload(builtins.eval, create),
        "builtins.exec": Payload(builtins.exec, create),
        "os.system in labels": _with(labels=Payload(os.system, touch)),
        "eval as a dict value": {b"data": Payload(builtins.eval, create), b"labels": []},
        "numpy global not allowed": Payload(np.save, str(marker), np.zeros(1)),
    }


HOSTILE_CASES = list(_hostile_payloads(Path("x")))


@pytest.mark.parametrize("case", HOSTILE_CASES)
@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_cifar_pickle_with_code_is_refused(tmp_path: Path, case: str, name: str) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "data"
    folder.mkdir()
    if name == "batches.meta":
        write_pickle(folder / "data_batch_1", cifar_batch())
    path = write_pickle(folder / name, _hostile_payloads(marker)[case])

    raises_naming(path, lambda: load_cifar10(folder), "refusing")
    assert not marker.exists(), "the pickle's code ran"
    assert not marker.with_suffix(".npy").exists(), "the pickle's code ran"


def test_hostile_payload_really_runs_with_plain_pickle(tmp_path: Path) -> None:
    # Guards the test above: the same payload does create the file under pickle.load.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()")))
    assert marker.exists()


# --- deterministic splits ------------------------------------------------------------------------


def _assert_same_splits(a: DatasetSplits, b: DatasetSplits) -> None:
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, part).images, getattr(b, part).images)
        np.testing.assert_array_equal(getattr(a, part).labels, getattr(b, part).labels)


def _row_counts(*parts: ImageArrays) -> Counter[bytes]:
    """Each (image, label) row as bytes, with how often it occurs."""
    counts: Counter[bytes] = Counter()
    for part in parts:
        for image, label in zip(part.images, part.labels, strict=True):
            counts[image.tobytes() + int(label).to_bytes(8, "little")] += 1
    return counts


def test_digits_splits_are_deterministic() -> None:
    first = load_splits("digits", seed=0)
    again = load_splits("digits", seed=0)
    other = load_splits("digits", seed=1)

    _assert_same_splits(first, again)
    assert len(other.train) == len(first.train)
    assert not np.array_equal(first.train.images, other.train.images)
    assert not np.array_equal(first.test.labels, other.test.labels)


def test_digits_splits_partition_the_data() -> None:
    raw = load_raw("digits")
    splits = load_splits("digits", seed=0)

    assert splits.num_classes == 10
    assert splits.input_shape == (1, 28, 28)
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(raw.data)
    assert min(len(splits.val), len(splits.test)) > 0
    # every row of the data is in exactly one split (as a multiset, so duplicates count)
    assert _row_counts(splits.train, splits.val, splits.test) == _row_counts(raw.data)


def test_split_raw_parts_are_disjoint_by_index() -> None:
    n = 300
    index = np.arange(n, dtype=np.uint16)
    images = index.view(np.uint8).reshape(n, 1, 1, 2).copy()  # each image encodes its row
    raw = RawDataset("indexed", tuple("abc"), ImageArrays(images, (index % 3).astype(np.int64)))

    splits = split_raw(raw, seed=7)

    def rows(part: ImageArrays) -> set[int]:
        return set(part.images.reshape(-1, 2).copy().view(np.uint16).ravel().tolist())

    train, val, test = rows(splits.train), rows(splits.val), rows(splits.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(n))
    assert len(train) + len(val) + len(test) == n
