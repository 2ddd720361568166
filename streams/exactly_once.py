"""The stream worker's exactly-once side: outcomes inside Faust's per-partition transactions.

Under `processing_guarantee="exactly_once"` Faust keeps one transactional
producer per source partition (transactional id `<group>-<topic group>-<partition>`)
and commits a partition's acked offsets by sending them into that producer's
transaction and committing it. `TransactionalOutcomes` makes the outcomes of a
batch part of the same transactions and keeps three things true that Faust
alone does not:

- each outcome goes through the producer of its request's partition, and a
  batch's records are acked in the same `CommitGate.producing()` section that
  produced their outcomes, run by run of consecutive offsets
  (`streams.offsets.offset_runs`), after every earlier record of the partition;
  Faust's commits run in `committing()`, never in between;
- at a rebalance the open transactions are aborted before Faust forgets the
  acked offsets of the revoked partitions (it reads them again from the
  committed offset afterwards), and runs that still come with records from
  before the rebalance are voided (`RebalanceVoided`);
- producers of partitions this worker lost are stopped (Faust skips partitions
  its assignor keeps as standbys).

Each rule answers a failure seen on the embedded broker: a deadlock with
`--concurrency 2`, outcomes committed twice after a partition came back, a
worker exiting 3 on a fenced producer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import EventT

from streams.commit_gate import CommitGate, RebalanceVoided
from streams.inference import Outcome
from streams.metrics import StreamMetrics
from streams.offsets import OffsetGate, Position, offset_runs

log = logging.getLogger(__name__)

Produce = Callable[[Any, Sequence[Outcome], Sequence[str]], Awaitable[None]]


class TransactionalOutcomes:
    """Produces and acks batches inside Faust's transactions (see the module docstring)."""

    def __init__(
        self,
        app: faust.App,
        offsets: OffsetGate,
        produce: Produce,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.app = app
        self.offsets = offsets
        self.gate = CommitGate()
        self._produce = produce
        self._metrics = metrics
        self._transactional_ids: set[str] = set()  # of the partitions assigned to this worker

    def transactional_id(self, tp: Any) -> str:
        """Faust's transactional id for a source partition (`TransactionManager.commit`)."""
        group = self.app.assignor.group_for_topic(tp.topic)
        return f"{self.app.conf.id}-{group}-{tp.partition}"

    # -- rebalances ------------------------------------------------------------------------

    async def before_revoke(self) -> None:
        """Before Faust handles revoked partitions (its eager protocol revokes all of them,
        also those that come back): abort the open transactions, suspend commits.

        Faust drops the acked offsets of revoked partitions without committing them and
        reads them again from the committed offset, so outcomes produced since the last
        commit must not stay in a transaction: a partition that came back kept its open
        transaction, its records were processed again, and both copies were committed."""
        async with self.gate.committing():  # batches inside `producing()` finish first
            self.gate.suspend()
            for transactional_id in sorted(self._transactional_ids):
                await self.app.producer.abort_transaction(transactional_id)

    async def on_assigned(self, assigned: Any) -> None:
        """After Faust began the transactions of the new assignment: stop the producers of
        partitions this worker lost and let commits run again.

        Faust's transaction manager stops only producers of partitions that are not
        standbys, and its assignor keeps a partition revoked from this worker as a standby
        (faust-streaming 0.15.3). The producer stayed open, the new owner fenced it, the
        partition came back, Faust reused it and every send failed."""
        assignor = self.app.assignor
        current = {self.transactional_id(tp) for tp in assigned if not assignor.is_standby(tp)}
        for transactional_id in sorted(self._transactional_ids - current):
            log.info("stopping the transactional producer %s (partition revoked)", transactional_id)
            await self.app.producer.stop_transaction(transactional_id)
        self._transactional_ids = current
        self.gate.resume()

    def close(self, reason: str) -> None:
        """Part of a batch's outcomes may sit in open transactions while its records are never
        acked: this process must commit no transaction any more."""
        log.warning("no more transaction commits from this worker: %s", reason)
        self.gate.close(reason)

    # -- one batch -------------------------------------------------------------------------

    async def commit_batch(
        self, outcomes: list[Outcome], positions: list[Position], events: Sequence[EventT]
    ) -> None:
        """The batch in runs of consecutive offsets of one partition, each on its own. A batch
        that waited as a whole for every earlier record could hold back a record another
        batch waits for (concurrent actors interleave records): a deadlock. A run waits only
        for records before its first offset, so every wait points to an earlier record of its
        partition or to a batch taken earlier: no cycle."""
        answers = await asyncio.gather(
            *(self._commit_run(run, outcomes, positions, events) for run in offset_runs(positions)),
            return_exceptions=True,
        )
        runs = [answer for answer in answers if isinstance(answer, _RunDone)]
        if runs and self._metrics is not None:
            if any(run.waited for run in runs):
                self._metrics.ack_waits.inc()
            # per batch, as at-least-once: until the broker acknowledged all of its outcomes
            self._metrics.outcome_acks.observe(max(run.ack_s for run in runs))
        errors = [answer for answer in answers if isinstance(answer, BaseException)]
        for error in errors:  # a real failure comes before a voided run
            if not isinstance(error, RebalanceVoided):
                raise error
        if errors:
            raise errors[0]

    async def _commit_run(
        self,
        indexes: list[int],
        outcomes: list[Outcome],
        positions: list[Position],
        events: Sequence[EventT],
    ) -> _RunDone:
        """Once every earlier record of the run's partition is acked, produce its outcomes in
        that partition's transaction and ack its records."""
        own = [positions[i] for i in indexes]
        waited = self.offsets.blocking(own)
        if waited:
            await self.offsets.wait_earlier(own)
        run = [outcomes[i] for i in indexes]
        transactional_id = self.transactional_id(own[0][0])
        async with self.gate.producing():
            generation = self.app.consumer_generation_id
            if self.gate.suspended or any(
                events[i].message.generation_id != generation for i in indexes
            ):
                self.offsets.finished(own)  # later runs go on (and are voided in turn)
                raise RebalanceVoided(f"records of {own[0][0]} taken before a rebalance")
            sent_at = time.perf_counter()
            await self._produce(self.app.producer, run, [transactional_id] * len(run))
            ack_s = time.perf_counter() - sent_at
            self.offsets.finished(own)
            consumer = self.app.consumer
            for i in indexes:  # Faust's own ack after the batch then finds them acked
                events[i].message.ack(consumer)
        return _RunDone(waited, ack_s)


@dataclass(frozen=True)
class _RunDone:
    """A run whose outcomes the broker acknowledged."""

    waited: bool  # for earlier records of its partition
    ack_s: float  # from handing its outcomes to the producer to the last acknowledgement
