"""What a distributed worker needs from whoever launched it, as protocols.

The worker loop (`worker.py`) knows nothing about Ray: Ray Train
(`ray_backend.py`) or a plain `torch.distributed` launcher (`standalone.py`,
used inside network namespaces by the benchmark) gives it a `WorkerEnv`. The
parameter-server strategies also get a `ServerClient`, which only the Ray
backend provides.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from training.distributed.compression import Push
from training.loop import EpochRecord


class ServerClient(Protocol):
    """The parameter-server shards, seen from one worker."""

    @property
    def shards(self) -> int: ...

    def load(self, generation: int, states: list[dict[str, Any]]) -> None:
        """Give every shard its parameters (and optimizer state, when resuming)."""

    def exchange(self, generation: int, pushes: list[Push]) -> list[np.ndarray]:
        """Push one payload per shard; returns each shard's float32 weights after the step."""
        ...

    def weights(self) -> list[np.ndarray]:
        """Every shard's current float32 weights."""
        ...

    def end_epoch(self, val_loss: float) -> None:
        """Step the shards' learning-rate schedules."""

    def states(self) -> list[dict[str, Any]]:
        """Every shard's parameters and optimizer state, for a checkpoint."""
        ...


class WorkerEnv(Protocol):
    """The launcher's side of one worker: its rank, progress out, stop requests in."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def servers(self) -> ServerClient | None: ...

    def report(self, record: EpochRecord) -> None:
        """Rank 0 hands over each finished epoch."""

    def stop_requested(self) -> bool:
        """Rank 0 asks whether the driver wants the run stopped."""
        ...

    def finish(self, outcome: str) -> None:
        """Rank 0 says how the run ended: finished, cancelled, or diverged: <why>."""
