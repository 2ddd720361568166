"""The one module that talks to Ray for distributed training.

- Workers: a Ray Train `TorchTrainer` (DDP over gloo, 1 CPU and 1 torch thread
  per worker) runs `worker.run_worker` on every rank; `FailureConfig` restarts
  the whole worker group after a worker dies, up to `max_retries` times, and
  the restarted workers continue from the run's checkpoint.
- Progress and stopping: a small control actor. Rank 0 pushes each epoch's
  record into it and polls its stop flag; the driver drains the records while
  `trainer.fit()` runs in a thread, calls `on_epoch` for each, and raises the
  stop flag when `should_stop()` says so.
- Parameter servers: one async actor per shard (`server.ParameterShard`),
  created by the driver, handed to the workers, killed at the end.
All helper actors take no CPU, so two workers fit on a two-CPU node.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from pydantic import BaseModel
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from headrace.errors import HeadraceError, JobCancelled, TrainingDiverged, WorkerCrashed
from training.distributed.compression import Push
from training.distributed.server import ParameterShard
from training.distributed.worker import WorkerSpec, run_worker
from training.loop import EpochCallback, EpochRecord

POLL_S = 0.2
CANCEL_GRACE_S = 60.0


@ray.remote(num_cpus=0)
class _Control:
    """Epoch records from rank 0 to the driver, a stop flag the other way, the outcome."""

    def __init__(self) -> None:
        self.records: list[str] = []
        self.stop = False
        self.attempts = 0
        self.outcome: str | None = None
        self.error: HeadraceError | None = None

    def push(self, record_json: str) -> None:
        self.records.append(record_json)

    def drain(self) -> list[str]:
        records, self.records = self.records, []
        return records

    def request_stop(self) -> None:
        self.stop = True

    def stop_requested(self) -> bool:
        return self.stop

    def attempt_started(self) -> None:
        self.attempts += 1
        self.outcome = None

    def finish(self, outcome: str) -> None:
        self.outcome = outcome

    def fail(self, error: HeadraceError) -> None:
        self.error = self.error or error

    def failed(self) -> HeadraceError | None:
        return self.error

    def result(self) -> tuple[int, str | None, HeadraceError | None]:
        return self.attempts, self.outcome, self.error


class RayServers:
    """`ServerClient` over the shard actors."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles

    @property
    def shards(self) -> int:
        return len(self.handles)

    def load(self, generation: int, states: list[dict[str, Any]]) -> None:
        ray.get([h.load.remote(generation, s) for h, s in zip(self.handles, states, strict=True)])

    def exchange(self, generation: int, pushes: list[Push]) -> list[np.ndarray]:
        refs = [
            h.push_pull.remote(generation, p) for h, p in zip(self.handles, pushes, strict=True)
        ]
        return list(ray.get(refs))

    def weights(self) -> list[np.ndarray]:
        return list(ray.get([h.weights.remote() for h in self.handles]))

    def end_epoch(self, val_loss: float) -> None:
        ray.get([h.end_epoch.remote(val_loss) for h in self.handles])

    def states(self) -> list[dict[str, Any]]:
        return list(ray.get([h.state.remote() for h in self.handles]))


class _RayEnv:
    """`WorkerEnv` of a Ray Train worker."""

    def __init__(self, control: Any, servers: RayServers | None) -> None:
        context = ray.train.get_context()
        self._rank = context.get_world_rank()
        self._world = context.get_world_size()
        self._control = control
        self._servers = servers

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world

    @property
    def servers(self) -> RayServers | None:
        return self._servers

    def report(self, record: EpochRecord) -> None:
        self._control.push.remote(record.model_dump_json())

    def stop_requested(self) -> bool:
        return bool(ray.get(self._control.stop_requested.remote()))

    def finish(self, outcome: str) -> None:
        ray.get(self._control.finish.remote(outcome))


def _train_loop(loop_config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker.

    A headrace error (bad data folder, bad checkpoint) would fail every retry
    the same way: it is recorded in the control actor and raised, Ray Train
    restarts the group (which also frees ranks waiting in a collective), and
    the restarted workers see the record and end at once.
    """
    control = loop_config["control"]
    if ray.get(control.failed.remote()) is not None:
        return
    handles = loop_config["servers"]
    env = _RayEnv(control, RayServers(handles) if handles else None)
    if env.rank == 0:
        ray.get(control.attempt_started.remote())
    try:
        run_worker(WorkerSpec.model_validate_json(loop_config["spec"]), env)
    except HeadraceError as exc:
        ray.get(control.fail.remote(exc))
        raise


class RayRun(BaseModel):
    """How the Ray run went."""

    attempts: int
    outcome: str


def _last_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[-1][:300]


def _failure_message(exc: BaseException) -> str:
    """The first failed worker's error, in one line."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        rank, error = sorted(failures.items())[0]
        return f"worker {rank}: {type(error).__name__}: {_last_line(error)}"
    return f"{type(exc).__name__}: {_last_line(exc)}"


def run_on_ray(
    spec: WorkerSpec,
    shard_shapes: list[list[list[int]]],
    on_epoch: EpochCallback | None,
    should_stop: Callable[[], bool] | None,
) -> RayRun:
    """Run the workers (and servers) for `spec` on the connected Ray cluster."""
    config = spec.config
    assert config.distributed is not None
    dcfg = config.distributed
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)
    control = _Control.remote()  # type: ignore[attr-defined]
    shard_actor = ray.remote(num_cpus=0)(ParameterShard)
    servers = [
        shard_actor.remote(config.model_dump_json(), names, shapes, dcfg.workers)
        for names, shapes in zip(spec.layout, shard_shapes, strict=True)
    ]
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"spec": spec.model_dump_json(), "control": control, "servers": servers},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(
            num_workers=dcfg.workers, use_gpu=False, resources_per_worker={"CPU": 1}
        ),
        run_config=RunConfig(
            name=f"headrace-{spec.run_dir.name}-{uuid.uuid4().hex[:8]}",
            storage_path=str((spec.run_dir / "ray").resolve()),
            failure_config=FailureConfig(max_failures=dcfg.max_retries),
        ),
    )
    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # reported in the driver thread below
            errors.append(exc)

    thread = threading.Thread(target=fit, name="headrace-ray-train", daemon=True)
    stop_deadline: float | None = None

    def drain() -> None:
        for item in ray.get(control.drain.remote()):
            if on_epoch is not None:
                on_epoch(EpochRecord.model_validate_json(item))

    try:
        thread.start()
        while thread.is_alive():
            thread.join(POLL_S)
            try:
                drain()
            except BaseException:
                control.request_stop.remote()
                thread.join(CANCEL_GRACE_S)
                raise
            if stop_deadline is None and should_stop is not None and should_stop():
                control.request_stop.remote()
                stop_deadline = time.monotonic() + CANCEL_GRACE_S
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                raise JobCancelled(
                    f"the job was cancelled; its workers did not stop within {CANCEL_GRACE_S:.0f} s"
                )
        drain()
        attempts, outcome, failure = ray.get(control.result.remote())
    finally:
        for actor in [control, *servers]:
            ray.kill(actor)
    if failure is not None:
        raise failure
    if stop_deadline is not None or outcome == "cancelled":
        raise JobCancelled("the job was cancelled")
    if errors:
        error = errors[0]
        if isinstance(error, HeadraceError):
            raise error
        raise WorkerCrashed(
            f"distributed training failed after {dcfg.max_retries} retries "
            f"(distributed.max_retries): {_failure_message(error)}"
        )
    if outcome is not None and outcome.startswith("diverged: "):
        raise TrainingDiverged(outcome.removeprefix("diverged: "))
    if outcome != "finished":
        raise WorkerCrashed(f"the workers ended without finishing (outcome {outcome!r})")
    return RayRun(attempts=attempts, outcome=outcome)
