"""Shared pytest wiring: tier markers by folder, the shared MNIST folder, small CPU budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by its tier folder, so `-m unit` / `-m integration` select by tier."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "unit" in parts:
            item.add_marker(pytest.mark.unit)


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
