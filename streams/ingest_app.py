"""The ingestion worker: a Faust app appending valid records of `data-<dataset>` to shards.

Its agent takes up to `flush_records` records (or what arrived within
`flush_interval_s`) with `Stream.take_events`, then, for that batch: produces
the DLQ records of the bad ones and waits for their acknowledgements, writes
one shard per partition (atomically, `training.datasets.shards`), and updates
the `class-counts` Faust table. Only then does it ask for the next batch, which
is when Faust acks the batch's records and may commit their offsets; Faust
flushes the producer (DLQ and table changelog) before it commits. So a record's
offset is committed only after the shard holding it is on disk: at-least-once.
Records below the shards' coverage are skipped after a restart
(`streams.ingest`), and readers de-duplicate by (partition, offset) anyway. DLQ
records are at-least-once: a crash between their acknowledgements and the
shard's rename produces them again after the restart (each names its source
partition and offset).

Two Faust behaviours would break that, so the app works around them. Faust
counts offsets it did not see arrive in order as done (meant for compacted
topics); with a table, its recovery seeks the partitions back to the committed
offsets after records were already delivered, its read position jumps, and the
commit then passed records whose shard was not written yet (records were lost
after a SIGKILL in tests/integration/test_data_ingest.py):
`contiguous_offsets=True` (`streams.faust_app`). And around that recovery Faust can
drop deliveries, leaving a partition stuck with records unread: every
`CHECK_INTERVAL_S`, and after a batch that saw a gap, each assigned partition is
checked and a stuck one is sought back to its shards' coverage
(`streams.ingest_watch`). A fatal error exits at once (code 3): nothing is lost
(offsets not committed, shards written atomically) and nothing is left to finish.

The table holds one `ClassCounts` per partition of the topic, keyed
`<dataset>:p<partition>`: each key is written only by the worker that owns that
partition, so the changelog (`<group>-class-counts-changelog`, whose latest
value per key `headrace data profile --ingested` reads) never interleaves two
writers' counts for one key. It uses the producer's key partitioner, so it can
be written after the batch, outside Faust's per-event context. Shards are the
truth: when a partition is assigned its counts are re-read from its shards, and
a recovered table value that disagrees (a crash between a shard and its table
update) is corrected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import ConsumerNotStarted
from faust.types import TP, EventT, StreamT
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from headrace.errors import DatasetError
from headrace.settings import BROKER_SILENCE_S, WatchSeconds
from streams.app import hold_events, source_record
from streams.broker_watch import BrokerWatch
from streams.data_messages import DATA_DLQ_TOPIC, ClassCounts, counts_key
from streams.delivery import produce_outcomes
from streams.faust_app import new_app, watch_broker
from streams.inference import SourceRecord
from streams.ingest import PartitionState, plan_batch
from streams.ingest_watch import CHECK_INTERVAL_S, PartitionWatch
from streams.topics import data_topic
from training.datasets.schema import SCHEMAS, dataset_schema
from training.datasets.shards import remove_temporaries, shards_dir, write_shard

log = logging.getLogger(__name__)
TABLE_NAME = "class-counts"
STOP_GRACE_S = 10.0
CONSUMER_CALL_TIMEOUT_S = 5.0  # a position or seek call during a rebalance: try again later
EXIT_BATCH_FAILED = 3


def default_group(dataset: str) -> str:
    """The ingestion worker's consumer group (and Faust app id) for `dataset`."""
    return f"headrace-ingest-{dataset}"


def changelog_topic(group: str) -> str:
    """The class-counts table's changelog topic of an ingestion group."""
    return f"{group}-{TABLE_NAME}-changelog"


class IngestConfig(BaseModel):
    """What one `headrace data ingest` process consumes and where it writes."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="Registered dataset; its records' schema.")
    bootstrap: str = Field(min_length=1, description="Kafka bootstrap servers, comma-separated.")
    data_root: Path = Field(description="Shards go to <data_root>/<dataset>/shards.")
    group_id: str = Field(
        default="",
        pattern=r"^([A-Za-z0-9._-]+)?$",
        description="Consumer group and Faust app id; default headrace-ingest-<dataset>.",
    )
    flush_records: int = Field(default=500, ge=1, le=100_000, description="Most records a shard.")
    flush_interval_s: float = Field(
        default=2.0, gt=0, le=300, description="Longest wait to fill a shard, in seconds."
    )
    dlq_topic: str = DATA_DLQ_TOPIC
    partitions: int = Field(
        default=4, ge=1, description="Partitions of the data topic (and of the table changelog)."
    )
    broker_silence_s: WatchSeconds = Field(
        default=BROKER_SILENCE_S,
        description="Seconds without an answer from Kafka after which the worker logs that it "
        "has lost its broker (HEADRACE_BROKER_SILENCE_S).",
    )

    @field_validator("dataset")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in SCHEMAS:
            raise ValueError(f"unknown dataset {value!r} (choose {', '.join(sorted(SCHEMAS))})")
        return value

    def model_post_init(self, context: Any) -> None:
        if not self.group_id:
            self.group_id = default_group(self.dataset)

    @property
    def topic(self) -> str:
        return data_topic(self.dataset).name

    @property
    def shards(self) -> Path:
        return shards_dir(self.data_root, self.dataset)

    def broker_urls(self) -> list[str]:
        return [f"kafka://{server.strip()}" for server in self.bootstrap.split(",")]


class IngestWorker:
    """The Faust app, its ingestion agent and the class-counts table."""

    def __init__(
        self,
        config: IngestConfig,
        on_ready: Callable[[], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.config = config
        self.schema = dataset_schema(config.dataset)
        self.states: dict[int, PartitionState] = {}
        self.failed: BaseException | None = None
        self.totals = {"rows": 0, "dlq": 0, "skipped": 0, "shards": 0}
        self._on_ready, self._on_fatal = on_ready, on_fatal
        self.watch = PartitionWatch()
        self._lock = asyncio.Lock()  # one batch or one partition check at a time
        self._announced = False
        # table recovery misses the last changelog record on the embedded broker otherwise
        self.app = new_app(
            config.group_id,
            config.broker_urls(),
            contiguous_offsets=True,  # never commit past a record no shard holds
            producer_max_batch_size=1,
            topic_partitions=config.partitions,
        )
        self.topic = self.app.topic(
            config.topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.table = self.app.Table(
            TABLE_NAME,
            default=None,
            key_type=bytes,  # bytes keys and values: the raw serializer
            value_type=bytes,
            partitions=config.partitions,
            use_partitioner=True,
        )
        self.app.agent(self.topic, name="ingest", concurrency=1)(self._consume)
        self.app.timer(CHECK_INTERVAL_S, name="ingest-partition-check")(self._check_partitions)
        self.app.on_partitions_assigned.connect(self._assigned)
        self.app.on_partitions_revoked.connect(self._revoked)

    # -- Faust hooks -----------------------------------------------------------------------

    async def _assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if not self._announced:
            self._announced = True
            if self._on_ready is not None:
                self._on_ready()

    async def _revoked(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", ())
        for tp in revoked:
            if tp.topic == self.config.topic:  # its next owner re-reads the shards
                self.states.pop(tp.partition, None)
                self.watch.forget(tp.partition)

    async def _consume(self, stream: StreamT) -> None:
        config = self.config
        batches = cast(faust.Stream, stream).take_events  # StreamT does not declare it
        async for events in batches(config.flush_records, within=config.flush_interval_s):
            await self._handle_taken(events)

    # -- one batch -------------------------------------------------------------------------

    async def _handle_taken(self, events: Sequence[EventT]) -> None:
        """Return only when the batch's shards are on disk (or its events are held)."""
        if self.failed is not None:
            hold_events(events)  # stopping after a fatal error: leave the records for a restart
            return
        task = asyncio.ensure_future(self._locked_process([source_record(e) for e in events]))
        try:
            held = await asyncio.shield(task)
            hold_events([e for e in events if (e.message.partition, e.message.offset) in held])
        except asyncio.CancelledError:
            await asyncio.wait({task}, timeout=STOP_GRACE_S)
            if not task.done() or task.cancelled() or task.exception() is not None:
                task.cancel()
                hold_events(events)
            raise
        except Exception as exc:  # shards or DLQ records not written: nothing may be acked
            hold_events(events)
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        log.critical("stopping: %s", exc)
        if self._on_fatal is not None:
            self._on_fatal(exc)

    async def _locked_process(self, records: list[SourceRecord]) -> set[tuple[int, int]]:
        async with self._lock:
            held = await self._process(records)
        if held:  # seek back at once rather than at the next check
            await self._check_partitions()
        return held

    async def _process(self, records: list[SourceRecord]) -> set[tuple[int, int]]:
        """Handle one batch; returns the (partition, offset) of records held back after a gap."""
        for partition in sorted({r.partition for r in records}):
            if partition not in self.states:
                await self._load_state(partition)
        plan = plan_batch(records, self.schema, self.states, self.config.dlq_topic)
        await produce_outcomes(self.app.producer, plan.dlq)
        for shard in plan.shards:
            images, labels, offsets = shard.arrays(self.schema)
            written = await asyncio.to_thread(
                write_shard,
                self.config.shards,
                shard.partition,
                shard.first_offset,
                shard.last_offset,
                images,
                labels,
                offsets,
                shard.record_ids,
            )
            state = self.states[shard.partition]
            state.add(written, labels, offsets, shard.record_ids)
            self.watch.progressed(shard.partition, time.monotonic())
            self._publish(state)
            log.info(
                "%s: %d records, %d to the DLQ", written.path.name, len(labels),
                shard.last_offset - shard.first_offset + 1 - len(labels),
            )  # fmt: skip
        self.totals["rows"] += sum(len(s.records) for s in plan.shards)
        self.totals["dlq"] += len(plan.dlq)
        self.totals["skipped"] += plan.skipped
        self.totals["shards"] += len(plan.shards)
        for partition in plan.rewind:
            self.watch.gap(partition, time.monotonic())
        return plan.held

    async def _check_partitions(self) -> None:
        """Seek back every assigned partition that `self.watch` finds stuck (module docstring)."""
        if self.failed is not None or self.app.rebalancing:
            return  # during a rebalance Faust itself seeks to the committed offsets
        async with self._lock:
            try:
                assigned = self.app.consumer.assignment()
            except ConsumerNotStarted:
                return
            for partition in sorted(
                tp.partition for tp in assigned if tp.topic == self.config.topic
            ):
                try:
                    await self._check_partition(partition)
                except DatasetError as exc:  # stuck for good, or its shards are unreadable
                    self._fail(exc)
                    return
                except (TimeoutError, KafkaError) as exc:  # a rebalance started meanwhile
                    log.info("partition %d: not checked this time (%r)", partition, exc)

    async def _check_partition(self, partition: int) -> None:
        if partition not in self.states:  # assigned, but none of its records came yet
            await self._load_state(partition)
        if not self.watch.needs_position(partition, time.monotonic()):
            return
        consumer = self.app.consumer
        tp = TP(self.config.topic, partition)
        position = await asyncio.wait_for(consumer.position(tp), timeout=CONSUMER_CALL_TIMEOUT_S)
        coverage = self.states[partition].next_offset
        offset = self.watch.seek_to(partition, coverage, position, time.monotonic())
        if offset is None:
            return
        log.warning(
            "partition %d: stuck at offset %d while the consumer fetched up to %s (records "
            "skipped, dropped or held back); reading again from %d",
            partition, offset, position, offset,
        )  # fmt: skip
        # `seek_wait` seeks in the consumer's thread and moves Faust's read offset back too
        await asyncio.wait_for(consumer.seek_wait({tp: offset}), timeout=CONSUMER_CALL_TIMEOUT_S)

    async def _load_state(self, partition: int) -> None:
        """The partition's counts from its shards; the table is corrected if it disagrees."""
        if removed := remove_temporaries(self.config.shards, partition):
            log.info("partition %d: removed %d half-written shard(s)", partition, removed)
        state = await asyncio.to_thread(
            PartitionState.from_shards, self.config.shards, self.schema, partition
        )
        self.states[partition] = state
        self.watch.assigned(partition, time.monotonic())
        key = counts_key(self.config.dataset, partition)
        raw = self.table.get(key)
        try:
            recovered = None if raw is None else ClassCounts.model_validate_json(raw)
        except ValidationError:
            recovered = None
        if recovered is not None and state.agrees_with(recovered):
            return
        if recovered is not None or state.records or state.next_offset:
            said = (
                "nothing"
                if recovered is None
                else (f"{recovered.records} records up to offset {recovered.next_offset}")
            )
            log.warning(
                "partition %d: the class-counts table said %s, the shards hold %d records up "
                "to offset %d; publishing the shards' counts",
                partition, said, state.records, state.next_offset,
            )  # fmt: skip
            self._publish(state)

    def _publish(self, state: PartitionState) -> None:
        value = state.to_counts(self.config.dataset).model_dump_json().encode()
        self.table[counts_key(self.config.dataset, state.partition)] = value


def run_ingest(
    config: IngestConfig,
    announce: Callable[[dict[str, str]], None],
    loglevel: str = "warning",
) -> int:
    """Run until SIGTERM/SIGINT; `announce` gets the ready fields once consuming. Exit code."""
    from streams.worker import run_faust_app

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def ready() -> None:
        announce(
            {
                "dataset": config.dataset,
                "topic": config.topic,
                "group": config.group_id,
                "bootstrap": config.bootstrap,
                "shards": str(config.shards),
                "table": changelog_topic(config.group_id),
            }
        )

    def fatal(exc: BaseException) -> None:
        # Exit at once: a worker that cannot ingest has nothing to finish, and nothing is lost
        # (the held records' offsets are not committed, shards are written atomically).
        logging.shutdown()
        sys.stdout.flush()
        os._exit(EXIT_BATCH_FAILED)

    ingest = IngestWorker(config, on_ready=ready, on_fatal=fatal)
    watch_broker(
        ingest.app, loop, BrokerWatch(config.bootstrap, "ingestion worker", config.broker_silence_s)
    )
    code = run_faust_app(ingest.app, loop, loglevel)
    log.info("ingested %s", ingest.totals)
    return EXIT_BATCH_FAILED if ingest.failed is not None else code
