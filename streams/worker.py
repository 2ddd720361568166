"""Runs one stream worker process: models loaded, metrics exposed, Faust's worker lifecycle.

Faust's `Worker` owns the event loop and the signal handlers: SIGTERM or
SIGINT stops the app (the agents finish or hold their batch, the consumer
commits what is safe) and the process exits 0. The models are loaded on that
same loop before the worker starts, so the batchers live where the agent runs.

The process's event loops are uvloop's (Faust's `-L uvloop`): the main one and
the one Faust's consumer thread makes. The worker spends about a sixth less CPU
per record on them than on asyncio's (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

import faust
import uvloop

from headrace.gc_pauses import prepare_for_serving
from serving.dataplane import DataPlane
from serving.metrics import ServingMetrics
from serving.model_manager import ModelManager
from serving.repository import ModelRepository
from streams import log_flood
from streams.app import StreamWorker
from streams.broker_watch import BrokerWatch
from streams.config import StreamWorkerConfig
from streams.faust_app import watch_broker
from streams.group_watch import AssignmentWatch
from streams.job_messages import ModelUpdate
from streams.metrics import StreamMetrics
from streams.model_updates import follow_model_updates

log = logging.getLogger(__name__)
EXIT_BATCH_FAILED = 3
EXIT_STOP_TIMEOUT = 4
STOP_DEADLINE_S = 45.0  # a stop that hangs (say the broker vanished) ends the process anyway
ASSIGNMENT_CHECK_S = 1.0  # how often `_warn_while_unassigned` asks its `AssignmentWatch`


class WatchdogWorker(faust.Worker):
    """Faust's worker, with a watchdog once a stop signal arrives, and the Kafka clients'
    repeated log lines cut down (`streams.log_flood`).

    aiokafka's consumer thread can hang in `stop()` when the broker is gone; the
    watchdog turns that into a prompt exit instead of a process that never ends.
    """

    def _schedule_shutdown(self, signal: signal.Signals) -> None:  # mode's signal hook
        if not self._signal_stop_time:
            watchdog = threading.Timer(STOP_DEADLINE_S, os._exit, args=(EXIT_STOP_TIMEOUT,))
            watchdog.daemon = True
            watchdog.start()
        super()._schedule_shutdown(signal)

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:  # mode's hook
        super().on_setup_root_logger(logger, level)
        log_flood.install(logger.handlers, log_flood.RepeatFilter())  # `streams.log_flood`


def run_faust_app(app: faust.App, loop: asyncio.AbstractEventLoop, loglevel: str) -> int:
    """Run `app` under `WatchdogWorker` until SIGTERM/SIGINT or a fatal error; its exit code."""
    worker = WatchdogWorker(app, loop=loop, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    if not sys.stdout.isatty():
        worker.spinner = None  # Faust draws it with terminal escapes, which garble piped output
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0  # pragma: no cover - execute_from_commandline always exits


def _live_state(manager: ModelManager) -> list[tuple[str, str, int, int, int]]:
    rows = []
    for name, versions in manager.loaded().items():
        for version in versions:
            loaded = manager.get(name, version)
            batcher = loaded.batcher
            rows.append(
                (name, str(version), batcher.queue_depth, batcher.in_flight, loaded.model.instances)
            )
    return rows


def _reload_models(app: faust.App, manager: ModelManager, config: StreamWorkerConfig) -> None:
    """New versions go live without a restart: on announcements and on a polling timer."""

    async def announced(update: ModelUpdate) -> None:
        await manager.poll_once()

    async def follow() -> None:
        await follow_model_updates(config.bootstrap, announced, config.updates_topic)

    async def poll() -> None:
        await manager.poll_once()

    app.task(follow)
    if config.poll_interval_s > 0:
        app.timer(interval=config.poll_interval_s)(poll)


def _warn_while_unassigned(
    loop: asyncio.AbstractEventLoop, stream: StreamWorker, config: StreamWorkerConfig
) -> None:
    """Say so while the consumer group gives this worker no assignment (`streams.group_watch`).
    On the loop itself: Faust starts an app's tasks and timers only after the first
    assignment."""
    watch = AssignmentWatch(
        config.group_id, "workers", config.requests_topic, config.unassigned_warn_s
    )

    def check() -> None:
        if watch.check(stream.ready):
            loop.call_later(ASSIGNMENT_CHECK_S, check)

    loop.call_later(ASSIGNMENT_CHECK_S, check)


def run_worker(
    config: StreamWorkerConfig,
    announce: Callable[[dict[str, str]], None],
    loglevel: str = "warning",
) -> int:
    """Run until SIGTERM/SIGINT; `announce` gets the ready fields once consuming. Exit code."""
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # this process's loops, threads too
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    serving_metrics = ServingMetrics(lambda: _live_state(manager))
    manager = ModelManager(
        ModelRepository(config.repository),
        policy=config.version_policy,
        on_execute=lambda name, version, batch: serving_metrics.observe_execution(
            name, version, batch.rows
        ),
    )
    dataplane = DataPlane(manager, serving_metrics)
    loop.run_until_complete(manager.load_all())
    metrics = StreamMetrics(serving_metrics)
    metrics_port = (
        None
        if config.metrics_port is None
        else metrics.serve(config.metrics_port, config.metrics_host)
    )
    served = sorted(manager.loaded().items())  # every version the policy serves, not the latest
    models = ",".join(f"{n}:{v}" for n, versions in served for v in versions) or "none"

    def ready() -> None:
        prepare_for_serving()  # consuming: fewer and shorter collections from here on
        announce(
            {
                "group": config.group_id,
                "bootstrap": config.bootstrap,
                "metrics": str(metrics_port),
                "models": models,
                "guarantee": config.processing_guarantee,
            }
        )

    def fatal(exc: BaseException) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # Faust's handler stops the worker cleanly

    stream = StreamWorker(config, dataplane, metrics, on_ready=ready, on_fatal=fatal)
    _reload_models(stream.app, manager, config)
    _warn_while_unassigned(loop, stream, config)
    watch = BrokerWatch(config.bootstrap, "stream worker", config.broker_silence_s)
    metrics.watch_broker(watch_broker(stream.app, loop, watch))
    metrics.watch_lag(stream.consumer_lag)
    code = run_faust_app(stream.app, loop, loglevel)
    if stream.failed is not None:
        return EXIT_BATCH_FAILED
    return code
