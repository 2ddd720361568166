"""Fixtures shared by the integration tests: the ONNX files the test servers serve."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from server_fixtures import ModelFiles


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    """Two LeNet-5 exports with different weights and the slow model, built once per session."""
    # Imported here: only the server tests pay for it (and get our generated protos loaded).
    from server_fixtures import ModelFiles, build_slow_model, export_lenet, seconds_per_trip

    folder = tmp_path_factory.mktemp("onnx")
    slow = build_slow_model(folder / "slow.onnx")
    return ModelFiles(
        lenet_a=export_lenet(folder / "lenet-a.onnx", seed=0),
        lenet_b=export_lenet(folder / "lenet-b.onnx", seed=1),
        slow=slow,
        trip_s=seconds_per_trip(slow),
    )
