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
consumer (`streams.faust_app`) runs Faust's commits through its `CommitGate`. A failed or
cut-off batch closes the gate: that process commits nothing more, and the next
owner's producers abort its open transactions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.sensors import Sensor
from faust.types import TP, EventT, StreamT

from streams.commit_gate import RebalanceVoided
from streams.config import StreamWorkerConfig
from streams.delivery import PendingOutcomes, produce_outcomes, send_outcomes
from streams.exactly_once import TransactionalOutcomes
from streams.faust_app import WorkerApp, new_app
from streams.inference import InferenceBackend, Outcome, SourceRecord, Topics, handle_batch
from streams.metrics import StreamMetrics
from streams.offsets import OffsetGate, Position

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
# An agent held back by outcomes the broker has not answered says so this often. aiokafka gives
# up on a produce only after Faust's producer request timeout (20 minutes).
ANSWER_WAIT_WARN_S = 20.0


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
            app = cast(WorkerApp, self.app)
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
