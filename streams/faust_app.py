"""The Faust app the stream and ingestion workers run on, and its Kafka transport.

`new_app` makes a Faust app with no web server and in-memory tables on a consumer
tuned for the embedded broker (`BROKER_SETTINGS`, a short idle fetch) and for
Apache Kafka alike; `watch_broker` has its consumer report whether Kafka answers.

The consumer delivers a fetched message to the agent inline when the delivery
need not wait (`streams.eager`); Faust's race against a rebalance, four asyncio
tasks per message, is kept for deliveries that wait on a full stream buffer. It
asks its thread for records with a short timeout (`GETMANY_TIMEOUT_S`), so that
a request made under backpressure never leaves the agent without records.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT
from mode.services import WaitResults

from streams import eager, init_producer_id
from streams.broker_watch import BrokerWatch, check_every, watch_client
from streams.commit_gate import CommitGate
from streams.partitioner import KeyPartitioner

log = logging.getLogger(__name__)

# DESIGN.md, "Known facts about the embedded broker": fast group joins, earliest offsets,
# acks from all replicas, frequent commits; they are sound on Apache Kafka as well.
BROKER_SETTINGS: dict[str, Any] = {
    "broker_session_timeout": 2.0,
    "broker_heartbeat_interval": 0.3,
    "broker_rebalance_timeout": 10.0,
    "consumer_auto_offset_reset": "earliest",
    "producer_acks": -1,
    "broker_commit_interval": 0.2,
    "broker_commit_every": 100,
}
FETCH_BYTES = 8 * 1024 * 1024  # above the codec's 4 MiB limit, so oversized records reach the DLQ
# Longest time the broker may hold a fetch that finds no new record. Faust hard-codes 1500 ms;
# the embedded broker holds an empty fetch for about that long even when records arrive
# meanwhile, so a worker that has caught up saw each new request up to 1.5 s late (p99 1.7 s
# at half the peak rate, benchmarks/streaming.py). On Apache Kafka a fetch returns as soon as
# data arrives; this only bounds the idle fetch rate (<= 1000 / FETCH_MAX_WAIT_MS per second).
FETCH_MAX_WAIT_MS = 10
# Longest wait of one request for records from Faust's consumer thread. Faust asks for 1 s.
# A request made while the stream buffer is full covers only the partitions not paused by
# backpressure, and such requests came back empty after the whole second while the buffer ran
# dry: 3 of the 9 requests of a 60,000-record run, the worker's core idle 10 to 20% of the time.
# A short request is simply made again, with the partitions that are active by then.
GETMANY_TIMEOUT_S = 0.02


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads it when the consumer starts; Faust offers no setting for it.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        watch = getattr(self.app, "broker_watch", None)
        if watch is not None:  # its requests tell whether Kafka answers (`streams.broker_watch`)
            watch_client(consumer._client, watch)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        # Faust's fetcher delivers each message with `wait_first(delivery, suspend_flow.wait())`
        # (the race lets a rebalance abandon a delivery stuck on a full buffer). mode's
        # `wait_first` costs four tasks and an `asyncio.wait` per message; a delivery that
        # finishes without waiting, nearly all of them, is run inline instead (`streams.eager`).
        racing = self.suspend_flow.is_set()  # a rebalance has begun: race as Faust does
        if racing or len(coros) != 2 or timeout is not None or not asyncio.iscoroutine(coros[0]):
            return await super().wait_first(*coros, timeout=timeout)
        delivery, flow_wait = coros
        try:
            finished, value = eager.start(delivery)
        except BaseException:
            _close(flow_wait)
            raise
        if not finished:  # it waits: race the rest of it as Faust does
            return await super().wait_first(value, flow_wait)
        _close(flow_wait)
        if self._stopped.is_set() or self._crashed.is_set():
            return WaitResults([], [], True)
        return WaitResults([delivery], [value], False)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        return await super()._getmany(active_partitions, min(timeout, GETMANY_TIMEOUT_S))

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        # Faust counts offsets it never saw (compaction, transaction markers) as done, so the
        # commit can pass them. On a topic whose offsets are contiguous, a jump means records
        # were skipped on the way: an app made with `contiguous_offsets=True` leaves them undone.
        if getattr(self.app, "contiguous_offsets", False):
            log.warning("%s: offsets %d..%d skipped by the fetcher", tp, offset_from, offset_to)
            return
        await super()._add_gap(tp, offset_from, offset_to)

    async def _commit_tps(self, tps: Any, start_new_transaction: bool) -> bool:
        # Faust reads the acked offsets and commits them (under exactly-once: sends them into
        # each partition's transaction and commits it) here; a `CommitGate` keeps that between
        # batches.
        gate = getattr(self.app, "commit_gate", None)
        if gate is None:
            return bool(await super()._commit_tps(tps, start_new_transaction))
        async with gate.committing() as allowed:
            if not allowed:
                return False
            return bool(await super()._commit_tps(tps, start_new_transaction))

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Runs before Faust forgets the revoked partitions' acked offsets (see
        # `streams.exactly_once.TransactionalOutcomes.before_revoke`).
        before_revoke = getattr(self.app, "before_revoke", None)
        if before_revoke is not None:
            await before_revoke()
        await super().on_partitions_revoked(revoked)

    async def commit_and_end_transactions(self) -> None:
        # Faust's last commit when the worker stops. Its `commit()` returns without committing
        # when the commit timer's commit is in flight, so the last acked records were left to
        # the next owner (their outcomes aborted, the records processed again). Under a
        # `CommitGate` commits cannot overlap anyway, so this one always runs.
        if getattr(self.app, "commit_gate", None) is None:
            await super().commit_and_end_transactions()
            return
        await self.force_commit(start_new_transaction=False)


def _close(awaitable: Any) -> None:
    if asyncio.iscoroutine(awaitable):
        awaitable.close()  # never started: no "was never awaited" warning


class _Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, with `FETCH_MAX_WAIT_MS` instead of its fixed 1500 ms."""

    Consumer = _Consumer


class WorkerApp(faust.App):
    """A Faust app whose consumer reads the hooks below (set by `new_app`, a `StreamWorker`
    and `watch_broker`)."""

    contiguous_offsets = False
    commit_gate: CommitGate | None = None  # set by an exactly-once `StreamWorker`
    before_revoke: Callable[[], Awaitable[None]] | None = None  # likewise
    broker_watch: BrokerWatch | None = None  # set by `watch_broker`

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)


def _data_dir(app_id: str) -> Path:
    """Faust's data folder: it holds nothing with memory tables, but Faust wants one. A new
    temporary folder for each app, removed when the process exits, so that neither the
    working directory nor the temporary one fills up with them."""
    path = Path(tempfile.mkdtemp(prefix=f"headrace-faust-{app_id}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def new_app(
    app_id: str, broker: list[str], contiguous_offsets: bool = False, **settings: Any
) -> faust.App:
    """A Faust app on the short-fetch transport: no web server, in-memory tables,
    at-least-once, `BROKER_SETTINGS`; `settings` add to or override those. With
    `contiguous_offsets` the consumer never commits past an offset it did not see.
    `processing_guarantee="exactly_once"` installs InitProducerId v3 in aiokafka
    (`streams.init_producer_id`), which Faust's idempotent producers need on Tansu."""
    options: dict[str, Any] = {
        "store": "memory://",
        "web_enabled": False,
        "autodiscover": False,
        "processing_guarantee": "at_least_once",
        "stream_wait_empty": True,
        # Faust's Cython stream iterator takes a record already in the stream buffer without
        # awaiting the queue, as its pure-Python twin always did (opt-in since faust-streaming
        # 0.14): 4% more LeNet-5 records/s in three alternated pairs (docs/performance.md).
        "cython_optimizations": True,
        "consumer_max_fetch_size": FETCH_BYTES,
        "producer_partitioner": KeyPartitioner(),  # aiokafka's, with the hash in native code
        "datadir": _data_dir(app_id),
        **BROKER_SETTINGS,
        **settings,
    }
    if options["processing_guarantee"] == "exactly_once":
        init_producer_id.install()
    app = WorkerApp(app_id, broker=broker, **options)
    app.contiguous_offsets = contiguous_offsets  # read by `_Consumer._add_gap`
    return app


def watch_broker(
    app: faust.App, loop: asyncio.AbstractEventLoop, watch: BrokerWatch
) -> BrokerWatch:
    """Have `app`'s consumer report to `watch` (made by `new_app`), checked on `loop`."""
    cast(WorkerApp, app).broker_watch = watch  # read when Faust creates the consumer
    check_every(loop, watch)
    return watch
