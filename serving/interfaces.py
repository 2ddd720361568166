"""Interfaces of the serving side, apart from their implementations.

`ModelRunner` is what executes one model version: `serving.runner.OnnxModel`
wraps ONNX Runtime; unit tests and stream workers can swap in their own.
`RunnerFactory` builds one from a model file and an instance count.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np


class ModelRunner(Protocol):
    """One loaded model version, executed by a pool of `instances` interchangeable sessions."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute one (batched) request; blocking and safe to call from many threads."""
        ...

    def set_instances(self, n: int) -> None:
        """Grow or shrink the pool to `n` instances (n >= 1)."""
        ...

    @property
    def instances(self) -> int:
        """The number of instances the pool is sized to."""
        ...

    def close(self) -> None:
        """Release the sessions; `run` fails afterwards."""
        ...


class RunnerFactory(Protocol):
    """Builds a runner for a model file (raises `ModelLoadError` for a bad file)."""

    def __call__(self, model_file: Path, *, instances: int) -> ModelRunner: ...
