"""The one environment: every heavy dependency imports side by side in one process."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "torch",
    "onnx",
    "onnxruntime",
    "faust",
    "kafka",
    "aiokafka",
    "ray",
    "nni",
    "hyperopt",  # NNI's Anneal tuner
    "ConfigSpace",  # NNI's BOHB advisor, with statsmodels
    "statsmodels.api",
    "opacus",
    "grpc",
    "grpc_health.v1.health",
    "grpc_reflection.v1alpha.reflection",
    "prometheus_client",
    "pydantic",
    "pydantic_settings",
    "sklearn",
    "click",
]


def test_all_dependencies_import_together() -> None:
    loaded = {name: importlib.import_module(name) for name in MODULES}
    assert loaded["torch"].__version__.startswith("2.13.0")


def test_no_torchvision() -> None:
    with pytest.raises(ImportError):
        importlib.import_module("torchvision")


def test_click_below_8_4_for_faust() -> None:
    from importlib.metadata import version

    major, minor = (int(part) for part in version("click").split(".")[:2])
    assert (major, minor) < (8, 4)


def test_installed_requirements_are_consistent() -> None:
    """`pip check`: no installed package's requirement is violated (NNI's filelock pin)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
