"""Running one training config on Ray, with progress and cancellation seen from the driver.

The only module that talks to Ray for whole jobs (the distributed strategies
start their own workers). A single-worker job runs the training recipe as one
Ray task; its epoch records come back through a Ray queue that the driver
drains while it waits, and cancelling kills the task. A distributed job runs
the recipe in the driver, which starts the workers itself
(`training.distributed.fit_distributed`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import ray
from ray.util.queue import Empty, Queue

from headrace.errors import HeadraceError, JobCancelled, WorkerCrashed
from training.config import TrainConfig
from training.loop import EpochCallback, EpochRecord
from training.recipe import TrainReport, run_training

POLL_S = 0.2
CONNECT_TIMEOUT_S = 5.0


def _check_answers(address: str) -> None:
    """Fail fast if nothing listens at a HOST:PORT (or ray://HOST:PORT) cluster address:
    `ray.init` would retry forever, deaf to SIGTERM and Ctrl-C. Other forms (`auto`) are
    left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdecimal():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise HeadraceError(
            f"no Ray cluster answers at RAY_ADDRESS={address} ({exc.strerror or exc}); start "
            "it, correct RAY_ADDRESS, or unset it to train on a local Ray"
        ) from None


def connect_ray(num_cpus: int | None = None) -> int:
    """Join the cluster at RAY_ADDRESS, or start a local one; returns the cluster's CPUs."""
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        if address is not None:
            _check_answers(address)
        try:
            ray.init(
                address=address,
                num_cpus=None if address else num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        except ConnectionError as exc:  # e.g. RAY_ADDRESS=auto with no cluster on this host
            raise HeadraceError(
                f"cannot join the Ray cluster at RAY_ADDRESS={address}: {exc}"
            ) from None
    return int(ray.cluster_resources().get("CPU", 0))


@ray.remote(num_cpus=1, max_retries=0)
def _train_task(config_json: str, progress: Queue) -> dict[str, Any]:
    """Runs in a Ray worker process: the whole recipe, epochs reported through `progress`."""
    import torch

    config = TrainConfig.model_validate_json(config_json)
    torch.set_num_threads(config.threads)
    report = run_training(config, on_epoch=lambda record: progress.put(record.model_dump()))
    return report.model_dump(mode="json")


def _drain(progress: Queue, on_epoch: EpochCallback | None) -> None:
    while True:
        try:
            item = progress.get_nowait()
        except Empty:
            return
        if on_epoch is not None:
            on_epoch(EpochRecord.model_validate(item))


def _unwrap(exc: ray.exceptions.RayError) -> Exception:
    """The headrace error inside a Ray failure, or WorkerCrashed for a dead process."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, HeadraceError):
            return cause
        return HeadraceError(f"training failed: {type(cause).__name__}: {cause}")
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return JobCancelled("the job was cancelled")
    return WorkerCrashed(f"the training worker died ({type(exc).__name__})")


def run_on_ray(
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainReport:
    """Train `config` on the connected Ray cluster and return the recipe's report."""
    distributed = config.distributed
    if distributed is not None and distributed.workers > 1:
        return run_training(config, on_epoch, should_stop)
    progress = Queue(actor_options={"num_cpus": 0})
    try:
        ref = _train_task.remote(config.model_dump_json(), progress)
        while not ray.wait([ref], timeout=POLL_S)[0]:
            _drain(progress, on_epoch)
            if should_stop is not None and should_stop():
                ray.cancel(ref, force=True)
                raise JobCancelled("the job was cancelled")
        _drain(progress, on_epoch)
        try:
            return TrainReport.model_validate(ray.get(ref))
        except ray.exceptions.RayError as exc:
            raise _unwrap(exc) from None
    finally:
        progress.shutdown(force=True, grace_period_s=0)
