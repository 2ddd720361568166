"""Shared pytest wiring: tier markers by folder, the shared MNIST folder, small CPU budgets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from training.datasets.split_cache import CACHE_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


SLOW_ENV = "HEADRACE_SLOW_TESTS"
LONG_FILES = (
    "test_readme.py",
    "test_distributed.py",
    "test_training_jobs.py",
    "test_stream_chaos.py",
    "test_tuning.py",
    "test_tuning_jobs.py",
    "test_acceptance.py",
)
"""Files that take minutes, started first: with `make test`'s two workers taking whole files,
a long file started last would leave the other worker idle at the end."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by its tier folder, so `-m unit` / `-m integration` select by tier.
    Tests marked `slow` (a full training run to an accuracy target, a distributed run whose
    worker is killed and retried) run only with HEADRACE_SLOW_TESTS=1 (`make test-slow`),
    keeping `make test` within its time budget."""
    run_slow = os.environ.get(SLOW_ENV) == "1"
    skip_slow = pytest.mark.skip(reason=f"a long test: set {SLOW_ENV}=1 (make test-slow)")
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "unit" in parts:
            item.add_marker(pytest.mark.unit)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
    order = {name: rank for rank, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: order.get(Path(str(item.fspath)).name, len(LONG_FILES)))


@pytest.fixture(autouse=True, scope="session")
def _split_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dataset splits are cached in a folder of this session, not the user's cache; the
    processes tests start inherit it."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("split-cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Small models train faster on one thread, and tests share two cores."""
    torch.set_num_threads(1)


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST test set from ../shared; skipped when this clone has no ../shared."""
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not found in {SHARED_MNIST} (only present beside the repo)")
    return SHARED_MNIST
