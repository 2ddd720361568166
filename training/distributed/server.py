"""Parameter-server shards: parameters partitioned by size, synchronous averaged steps.

`partition` spreads parameters over shards, largest first onto the least
loaded shard. A `ParameterShard` holds its parameters as one flat float32
vector plus the optimizer and learning-rate schedule the config asks for
(`build_optimizer`/`build_scheduler`, as in single-process training). It is
synchronous: each step waits until every worker has pushed, applies the
average of the pushed gradients, and answers every worker's push with the
new weights (so a push is also the pull). It is plain asyncio and torch, so
the Ray backend wraps it as an async actor and unit tests drive it directly.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from training.config import TrainConfig
from training.distributed.compression import Push
from training.loop import build_optimizer, build_scheduler


def partition(sizes: list[tuple[str, int]], shards: int) -> list[list[str]]:
    """Parameter names per shard: largest first onto the least loaded; model order kept."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    load = [0] * shards
    owner: dict[str, int] = {}
    for name, size in sorted(sizes, key=lambda item: -item[1]):
        target = min(range(shards), key=lambda s: (load[s], s))
        owner[name] = target
        load[target] += size
    return [[name for name, _ in sizes if owner[name] == s] for s in range(shards)]


class _Round:
    """One synchronous step: set when the last worker's push has been applied."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.weights: np.ndarray | None = None


class StaleGeneration(RuntimeError):
    """A push from a worker of an earlier (restarted) attempt."""


class ParameterShard:
    """One server: some of the model's parameters, their optimizer, synchronous steps."""

    def __init__(
        self, config_json: str, names: list[str], shapes: list[list[int]], workers: int
    ) -> None:
        torch.set_num_threads(1)
        self.config = TrainConfig.model_validate_json(config_json)
        self.names = names
        self.shapes = [tuple(shape) for shape in shapes]
        self.workers = workers
        self.params = nn.ParameterList(nn.Parameter(torch.zeros(shape)) for shape in self.shapes)
        self.numel = sum(math.prod(shape) for shape in self.shapes)
        self.optimizer = build_optimizer(self.params, self.config)
        self.scheduler = build_scheduler(self.optimizer, self.config)
        self.generation = -1
        self._sum = torch.zeros(self.numel)
        self._arrived = 0
        self._round = _Round()

    def load(self, generation: int, state: dict[str, Any]) -> None:
        """Start attempt `generation` from `state` (params, optionally optimizer/scheduler)."""
        with torch.no_grad():
            for param, name in zip(self.params, self.names, strict=True):
                param.copy_(torch.as_tensor(state["params"][name]).reshape(param.shape))
        self.optimizer = build_optimizer(self.params, self.config)
        self.scheduler = build_scheduler(self.optimizer, self.config)
        if state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        stale = self._round
        self.generation = generation
        self._sum.zero_()
        self._arrived = 0
        self._round = _Round()
        stale.done.set()  # waiters of the old attempt wake up and fail

    async def push_pull(self, generation: int, push: Push) -> np.ndarray:
        """Add one worker's gradient; when all have pushed, step; return the new weights."""
        if generation != self.generation:
            raise StaleGeneration(f"push from attempt {generation}, serving {self.generation}")
        if push.numel != self.numel:
            raise ValueError(f"push of {push.numel} entries to a shard of {self.numel}")
        self._sum += push.dense()
        self._arrived += 1
        current = self._round
        if self._arrived == self.workers:
            self._apply(self._sum / self.workers)
            current.weights = self.weights()
            self._sum.zero_()
            self._arrived = 0
            self._round = _Round()
            current.done.set()
        else:
            await current.done.wait()
        if current.weights is None:
            raise StaleGeneration("the shard was reloaded while this push waited")
        return current.weights

    def _apply(self, gradient: torch.Tensor) -> None:
        offset = 0
        for param in self.params:
            size = param.numel()
            param.grad = gradient[offset : offset + size].reshape(param.shape).clone()
            offset += size
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def weights(self) -> np.ndarray:
        """The shard's parameters, flat float32, in `names` order."""
        with torch.no_grad():
            return torch.cat([param.reshape(-1) for param in self.params]).numpy().copy()

    def end_epoch(self, val_loss: float) -> None:
        """Step the learning-rate schedule once per epoch (plateau needs the val loss)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        elif self.scheduler is not None:
            self.scheduler.step()

    def state(self) -> dict[str, Any]:
        """Parameters, optimizer and schedule, loadable with `load` (and weights_only)."""
        return {
            "params": {
                name: param.detach().clone()
                for name, param in zip(self.names, self.params, strict=True)
            },
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
        }
