"""The stream worker: a Faust app whose agent runs inference batches from `inference-requests`.

The agent takes up to `max_batch` records (or what arrived within
`max_delay_s`) with Faust's `Stream.take_events` -- `take()` with the events, so
each record's key, headers and position stay available -- and hands them to
`streams.inference.handle_batch`, which gives every record exactly one outcome
(a result or a DLQ record). The outcomes are produced with `acks=all`
(`streams.delivery`); while the broker acknowledges them the agent already runs
its next batch, and only once they are acknowledged are the batch's events acked,
so Faust may commit their offsets: at-least-once. At most `concurrency` batches
await the broker's answers at a time (the agent's actors share that limit).
`streams.offsets.OffsetGate` keeps the order of acks per partition, across
batches and concurrent actors.

If the batch is cancelled (the worker stops) it is given `STOP_GRACE_S` to
finish, and so are the acknowledgements still awaited; a batch that does not
finish, or whose outcomes cannot be produced, has its events held (an extra
reference), so Faust never marks them acked and they are consumed again after a
restart.

With `processing_guarantee="exactly_once"` Faust commits offsets by sending
them into a Kafka transaction, one transactional producer per source
partition; `streams.exactly_once.TransactionalOutcomes` produces each outcome
in its request's partition's transaction and acks the records itself, and the
consumer here runs Faust's commits through its `CommitGate`. A failed or
cut-off batch closes the gate: that process commits nothing more, and the next
owner's producers abort its open transactions.

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
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
from faust.sensors import Sensor
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, StreamT, TransportT
from mode.services import WaitResults

from streams import eager, init_producer_id
from streams.broker_watch import BrokerWatch, check_every, watch_client
from streams.commit_gate import CommitGate, RebalanceVoided
from streams.config import StreamWorkerConfig
from streams.delivery import PendingOutcomes, produce_outcomes, send_outcomes
from streams.exactly_once import TransactionalOutcomes
from streams.inference import InferenceBackend, Outcome, SourceRecord, Topics, handle_batch
from streams.metrics import StreamMetrics
from streams.offsets import OffsetGate, Position
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
STOP_GRACE_S = 10.0
# An agent held back by outcomes the broker has not answered says so this often. aiokafka gives
# up on a produce only after Faust's producer request timeout (20 minutes).
ANSWER_WAIT_WARN_S = 20.0


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


class _App(faust.App):
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
    app = _App(app_id, broker=broker, **options)
    app.contiguous_offsets = contiguous_offsets  # read by `_Consumer._add_gap`
    return app


def watch_broker(
    app: faust.App, loop: asyncio.AbstractEventLoop, watch: BrokerWatch
) -> BrokerWatch:
    """Have `app`'s consumer report to `watch` (made by `new_app`), checked on `loop`."""
    cast(_App, app).broker_watch = watch  # read when Faust creates the consumer
    check_every(loop, watch)
    return watch


def build_app(config: StreamWorkerConfig) -> faust.App:
    """A Faust app for `config`: no web server, no tables, `config.processing_guarantee`.
    Faust removes a partition from the fetcher when its stream buffer (`max_buffered`) is
    under pressure and adds it back once the buffer has drained: a saturated runner stops
    the fetching."""
    return new_app(  # the app id is the consumer group id
        config.group_id,
        config.broker_urls(),
        stream_buffer_maxsize=config.max_buffered,
        processing_guarantee=config.processing_guarantee,
    )


def source_record(event: EventT) -> SourceRecord:
    message = event.message
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=_header_pairs(message.headers),
        timestamp_s=message.timestamp or None,
    )


def _header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    return [(str(name), bytes(value)) for name, value in items]


def hold_events(events: Sequence[EventT]) -> None:
    """An extra reference per event: Faust's ack after the batch then never completes, so the
    offset is never committed and the record is read again after a restart or a rebalance.

    The consumer stops counting a held message as pending, too: Faust's graceful stop and its
    rebalances wait until every delivered message is acked, which a held one never is. Held
    records of the last batch made the ingestion worker's stop hang until its watchdog ended
    the process (exit 4)."""
    for event in events:
        event.message.incref()
    release_tracking(events)


def release_tracking(events: Sequence[EventT]) -> None:
    """Stop the consumer counting these (held) messages as pending; see `hold_events`."""
    for event in events:
        event.app.consumer.unacked.discard(event.message)


class BackpressureSensor(Sensor):
    """Counts Faust's pauses of a partition's fetching when its stream buffer fills."""

    def __init__(self, metrics: StreamMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def on_topic_buffer_full(self, tp: TP) -> None:
        self.metrics.backpressure_pauses.labels(tp.topic).inc()


@dataclass(frozen=True)
class _Sent:
    """A batch whose outcomes are handed to the producer, not yet acknowledged."""

    records: list[SourceRecord]
    positions: list[Position]
    events: Sequence[EventT]
    outcomes: list[Outcome]
    pending: PendingOutcomes
    sent_at: float  # time.perf_counter() when the outcomes were handed over


class StreamWorker:
    """The Faust app, its batch-inference agent and the outcome producer."""

    def __init__(
        self,
        config: StreamWorkerConfig,
        backend: InferenceBackend,
        metrics: StreamMetrics | None = None,
        on_ready: Callable[[], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.metrics = metrics
        self.topics = Topics(config.requests_topic, config.results_topic, config.dlq_topic)
        self.gate = OffsetGate()
        self.positions: dict[Any, int] = {}  # partition -> next offset the agent will take
        self.failed: BaseException | None = None
        # batches whose outcomes await the broker's acknowledgements -> their events
        self.unconfirmed: dict[asyncio.Future[None], Sequence[EventT]] = {}
        # of those, the broker's answers still awaited, oldest first (`_limit_unconfirmed`)
        self.unanswered: dict[asyncio.Future[None], int] = {}  # -> outcomes
        self._on_ready = on_ready
        self._on_fatal = on_fatal
        self._announced = False
        self.app = build_app(config)
        self.transactions: TransactionalOutcomes | None = None
        if config.processing_guarantee == "exactly_once":
            transactions = TransactionalOutcomes(self.app, self.gate, produce_outcomes, metrics)
            self.transactions = transactions
            app = cast(_App, self.app)
            app.commit_gate = transactions.gate  # read by `_Consumer._commit_tps`
            app.before_revoke = transactions.before_revoke  # by `on_partitions_revoked`
        self.requests = self.app.topic(
            config.requests_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.app.agent(self.requests, name="batch-infer", concurrency=config.concurrency)(
            self._consume
        )
        self.app.on_partitions_assigned.connect(self._assigned)
        self.app.on_partitions_revoked.connect(self._revoked)
        if metrics is not None:
            self.app.sensors.add(BackpressureSensor(metrics))
            metrics.watch_paused(self.paused_partitions)

    # -- Faust hooks -----------------------------------------------------------------------

    async def _assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if self.transactions is not None:
            await self.transactions.on_assigned(args[0] if args else kwargs.get("assigned", ()))
        if not self._announced:
            self._announced = True
            if self._on_ready is not None:
                self._on_ready()

    async def _revoked(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", ())
        self.gate.forget(revoked)
        for tp in revoked:
            self.positions.pop(tp, None)

    @property
    def ready(self) -> bool:
        """Whether the consumer has had its first assignment (the group's first rebalance)."""
        return self._announced

    def paused_partitions(self) -> int:
        """Partitions whose fetching is paused because their buffer is full."""
        return len(getattr(self.app.consumer, "_buffered_partitions", ()))

    def consumer_lag(self) -> list[tuple[str, int, int]]:
        """(topic, partition, records not yet taken) for the assigned partitions we have read.

        The embedded broker reports a wrong log end offset (DESIGN.md), so this gauge is only
        meaningful on Apache Kafka.
        """
        consumer = self.app.consumer
        lags = []
        for tp in consumer.assignment():
            if tp in self.positions:
                lag = max(0, consumer.highwater(tp) - self.positions[tp])
                lags.append((tp.topic, tp.partition, lag))
        return lags

    async def _consume(self, stream: StreamT) -> None:
        """The agent: one call per concurrent actor, each with its own stream on a shared queue."""

        def track(value: Any) -> Any:  # runs as each record is dequeued, in offset order
            event = stream.current_event
            if event is not None:
                self.gate.received(event.message.tp, event.message.offset)
                self.positions[event.message.tp] = event.message.offset + 1
            return value

        stream.add_processor(track)
        config = self.config
        batches = cast(faust.Stream, stream).take_events  # StreamT does not declare it
        try:
            async for events in batches(config.max_batch, within=config.max_delay_s):
                await self._handle_taken(events)
        finally:
            await self._settle_unconfirmed()

    # -- one batch -------------------------------------------------------------------------

    async def _handle_taken(self, events: Sequence[EventT]) -> None:
        """Return once the batch's outcomes are handed to the producer (or its events held).

        At-least-once: the broker's acknowledgements are awaited by a task of their own,
        which acks the events afterwards; meanwhile the agent runs its next batch. The
        events carry an extra reference until then, so Faust's ack when the agent asks for
        the next batch does not let their offsets be committed. At most `concurrency`
        batches await the broker's answers: the next one waits for the oldest answer.
        Exactly-once: return only when the batch's transaction work is done."""
        if self.failed is not None:
            hold_events(events)  # stopping after a fatal error: leave the records for a restart
            return
        positions: list[Position] = [(e.message.tp, e.message.offset) for e in events]
        records = [source_record(e) for e in events]
        task = asyncio.ensure_future(self._process(records, positions, events))
        try:
            sent = await asyncio.shield(task)
        except RebalanceVoided as voided:
            hold_events(events)  # never acked: Faust reads them again after the rebalance
            log.info("batch of %d records voided: %s", len(events), voided)
        except asyncio.CancelledError:
            await asyncio.wait({task}, timeout=STOP_GRACE_S)
            if not task.done() or task.cancelled() or task.exception() is not None:
                task.cancel()
                hold_events(events)
                if self.transactions is not None:
                    self.transactions.close("a batch was cut off by the stop")
            elif (sent := task.result()) is not None:
                self._confirm_later(sent)
            raise
        except Exception as exc:  # outcomes not produced: nothing of this batch may be acked
            hold_events(events)
            self._fail(exc)
        else:
            if sent is not None:
                self._confirm_later(sent)
                await self._limit_unconfirmed()

    async def _process(
        self, records: list[SourceRecord], positions: list[Position], events: Sequence[EventT]
    ) -> _Sent | None:
        outcomes = await handle_batch(records, self.backend, self.topics)
        if self.transactions is not None:
            await self.transactions.commit_batch(outcomes, positions, events)
            self._observe(records, outcomes)
            return None
        sent_at = time.perf_counter()
        pending = await send_outcomes(self.app.producer, outcomes)
        return _Sent(records, positions, events, outcomes, pending, sent_at)

    # -- acknowledgements (at-least-once) ------------------------------------------------

    def _confirm_later(self, sent: _Sent) -> None:
        for event in sent.events:
            event.message.incref()  # Faust's ack after this batch leaves them unacked
        answered = asyncio.ensure_future(sent.pending.confirmed())
        self.unanswered[answered] = len(sent.outcomes)
        answered.add_done_callback(self._forget_answered)
        task = asyncio.ensure_future(self._confirm(sent, answered))
        self.unconfirmed[task] = sent.events
        task.add_done_callback(self._forget_confirmed)

    def _forget_answered(self, answered: asyncio.Future[None]) -> None:
        self.unanswered.pop(answered, None)

    def _forget_confirmed(self, task: asyncio.Future[None]) -> None:
        self.unconfirmed.pop(task, None)

    async def _confirm(self, sent: _Sent, answered: asyncio.Future[None]) -> None:
        try:
            await answered  # cancelled with this task at the stop
        except Exception as exc:  # never acked: the records are read again after a restart
            release_tracking(sent.events)
            self._fail(exc)
            return
        if self.metrics is not None:
            self.metrics.outcome_acks.observe(time.perf_counter() - sent.sent_at)
        self.gate.finished(sent.positions)
        self._observe(sent.records, sent.outcomes)
        if self.gate.blocking(sent.positions):
            if self.metrics is not None:
                self.metrics.ack_waits.inc()
            await self.gate.wait_earlier(sent.positions)
        sensors = self.app.sensors
        for event in sent.events:
            if event.ack():  # the extra reference dropped: Faust may now commit the offset
                message = event.message  # what `Stream.ack` reports for a final ack
                sensors.on_message_out(message.tp, message.offset, message)

    async def _limit_unconfirmed(self) -> None:
        """Wait while more than `concurrency` batches await the broker's answers.

        The broker's answers only, never a batch's turn to be acked: a batch waits for its
        partitions' earlier records (`OffsetGate.wait_earlier`), and with concurrency > 1 one
        of those may sit in this actor's own take buffer, which Faust hands over only after
        this agent call returns. Waiting for such a batch hangs the agent for good (most likely
        the worker that hung replaying a backlog in one CI run of three). An answer long in
        coming is logged every `ANSWER_WAIT_WARN_S`; the records stay uncommitted meanwhile."""
        while len(self.unanswered) > self.config.concurrency:
            oldest = next(iter(self.unanswered))
            started = time.perf_counter()
            # awaited even when done: its done callbacks run only at the loop's next turn
            while not (await asyncio.wait({oldest}, timeout=ANSWER_WAIT_WARN_S))[0]:
                log.warning(
                    "%d outcomes not acknowledged by the broker after %.0f s; %d batches "
                    "(%d outcomes) await its answers and the agent waits for them (their "
                    "requests stay uncommitted). Check that the broker is healthy.",
                    self.unanswered.get(oldest, 0), time.perf_counter() - started,
                    len(self.unanswered), sum(self.unanswered.values()),
                )  # fmt: skip
            self.unanswered.pop(oldest, None)

    async def _settle_unconfirmed(self) -> None:
        """At the stop: give the batches awaiting acknowledgements `STOP_GRACE_S` to finish;
        the events of those that do not stay unacked, so they are read again later."""
        if not self.unconfirmed:
            return
        _, late = await asyncio.wait(set(self.unconfirmed), timeout=STOP_GRACE_S)
        for task in late:
            task.cancel()
            release_tracking(self.unconfirmed.pop(task, ()))

    def _fail(self, exc: BaseException) -> None:
        if self.transactions is not None:
            self.transactions.close(f"a batch failed: {exc}")
        if self.failed is not None:
            return
        self.failed = exc
        log.critical("stopping: %s", exc)
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _observe(self, records: list[SourceRecord], outcomes: list[Outcome]) -> None:
        if self.metrics is not None:
            results = sum(1 for o in outcomes if o.kind == "result")
            reasons = [o.reason or "internal" for o in outcomes if o.kind == "dlq"]
            now = time.time()
            latencies = [  # a client clock ahead of ours does not make time run backwards
                max(0.0, now - o.created_at)
                for o in outcomes
                if o.kind == "result" and o.created_at
            ]
            self.metrics.observe_batch(len(records), results, reasons, latencies)
