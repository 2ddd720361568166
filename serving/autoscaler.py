"""Moves a model's instance count between its min and max by queue depth, with a cool-down.

Only models whose config has an `autoscaling` section are scaled. Each tick
smooths the queue depth (exponential moving average); above
`target_queue_depth` per instance it adds an instance; with an empty queue, an
idle instance and a smoothed depth under half the target for one instance
fewer, it removes one; never more often than `cooldown_s`. Every
decision is logged and counted (`autoscaler_decisions_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from headrace.errors import ModelNotFound, ModelNotReady
from serving.metrics import ServingMetrics
from serving.model_manager import LoadedVersion, ModelManager

log = logging.getLogger(__name__)
SMOOTHING = 0.5  # weight of the newest queue-depth sample


@dataclass(frozen=True)
class Decision:
    """One change of a version's instance count."""

    model: str
    version: int
    old: int
    new: int
    queue_depth: float


@dataclass
class _Track:
    depth: float = 0.0
    last_change: float = float("-inf")


class Autoscaler:
    """Periodic scaling of every loaded version that asks for it."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: ServingMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.clock = clock
        self.tracks: dict[tuple[str, int], _Track] = {}

    def _loaded_versions(self) -> list[LoadedVersion]:
        versions: list[LoadedVersion] = []
        for name, numbers in self.manager.loaded().items():
            versions.extend(self.manager.get(name, v) for v in numbers)
        return versions

    def plan(self, loaded: LoadedVersion) -> int:
        """The instance count `loaded` should have now (its current count if no change)."""
        policy = loaded.config.autoscaling
        current = loaded.model.instances
        if policy is None:
            return current
        track = self.tracks.setdefault((loaded.name, loaded.version), _Track())
        track.depth = SMOOTHING * loaded.batcher.queue_depth + (1 - SMOOTHING) * track.depth
        if self.clock() - track.last_change < policy.cooldown_s:
            return current
        if track.depth > policy.target_queue_depth * current:
            return min(current + 1, policy.max_instances)
        idle = loaded.batcher.queue_depth == 0 and loaded.batcher.in_flight < current
        # Down only when one instance fewer would still sit well under the target.
        if idle and track.depth < policy.target_queue_depth * (current - 1) / 2:
            return max(current - 1, policy.min_instances)
        return max(min(current, policy.max_instances), policy.min_instances)

    def _still_served(self, loaded: LoadedVersion) -> bool:
        try:
            return self.manager.get(loaded.name, loaded.version) is loaded
        except (ModelNotFound, ModelNotReady):
            return False

    async def step(self) -> list[Decision]:
        """Evaluate every loaded version once and apply the changes. A version retired (hot
        reload, unload) while the step resized another is left alone: building sessions
        for it is wasted, and once closed it refuses them (ModelNotReady)."""
        decisions: list[Decision] = []
        served = self._loaded_versions()
        keys = {(loaded.name, loaded.version) for loaded in served}
        self.tracks = {key: track for key, track in self.tracks.items() if key in keys}
        for loaded in served:
            if not self._still_served(loaded):
                continue
            current = loaded.model.instances
            wanted = self.plan(loaded)
            if wanted == current:
                continue
            track = self.tracks[(loaded.name, loaded.version)]
            try:
                await asyncio.to_thread(loaded.model.set_instances, wanted)
            except ModelNotReady:  # closed while its sessions were built: retired meanwhile
                continue
            loaded.batcher.set_concurrency(wanted)
            track.last_change = self.clock()
            decision = Decision(loaded.name, loaded.version, current, wanted, track.depth)
            decisions.append(decision)
            direction = "up" if wanted > current else "down"
            log.info(
                "autoscaler: %s/%s %s from %d to %d instances (queue depth %.1f)",
                loaded.name, loaded.version, direction, current, wanted, track.depth,
            )  # fmt: skip
            if self.metrics is not None:
                self.metrics.scaling.labels(loaded.name, str(loaded.version), direction).inc()
        return decisions

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """Step every `interval_s` until `stop` is set."""
        while not stop.is_set():
            try:
                await self.step()
            except Exception:  # a failed tick must not stop scaling for good
                log.exception("autoscaler step failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
