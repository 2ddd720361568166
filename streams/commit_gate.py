"""Exactly-once: a Kafka transaction is committed only between batches, never in the middle of one.

Under `processing_guarantee="exactly_once"` Faust keeps one transactional
producer per source partition and, on its commit timer, sends the acked
offsets of that partition into its open transaction and commits it. Anything
produced through that producer since the last commit is committed with them.
If a commit fell between a batch's first produced outcome and the ack of its
records, the transaction would carry outcomes whose offsets it does not commit;
after a crash those records are processed again and their outcomes appear
twice, committed both times.

`CommitGate` orders the two: the agent produces a batch's outcomes and acks its
records inside `producing()` (shared: batches may overlap), and the consumer's
commit runs inside `committing()` (exclusive). A waiting commit keeps new
batches from entering, so steady traffic cannot starve it; a batch waits for
earlier records of its partitions *before* entering (run by run,
`streams.offsets.offset_runs`), so nothing inside waits on anything outside and
the gate cannot deadlock.

`suspend()` ... `resume()` brackets a rebalance: the worker aborts the open
transactions when partitions are revoked (Faust forgets the acked offsets of
revoked partitions and reads them again from the committed offset, so their
outcomes must not stay in a transaction), and until the new assignment no
commit runs and batches that enter are voided (`RebalanceVoided`).

`close()` stops all further commits of this process: the agent calls it when
a batch's outcomes may be partly inside a transaction while its records will
never be acked (a produce that failed, a batch cut off at shutdown). The open
transactions are then never committed; the next owner of the partitions fences
their producers, which aborts them, and reprocesses the records.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


class RebalanceVoided(Exception):
    """Records taken before a rebalance: Faust reads them again, nothing may be produced."""


class CommitGate:
    """Shared `producing()` sections for batches, exclusive `committing()` for commits."""

    def __init__(self) -> None:
        self._producing = 0
        self._committing = False
        self._commits_waiting = 0
        self._closed: str | None = None
        self._suspended = False
        self._changed = asyncio.Event()

    @property
    def suspended(self) -> bool:
        """Between `suspend()` and `resume()`: a rebalance is under way."""
        return self._suspended

    def suspend(self) -> None:
        self._suspended = True

    def resume(self) -> None:
        self._suspended = False

    @property
    def closed(self) -> str | None:
        """Why commits stopped, or None while they are allowed."""
        return self._closed

    def close(self, reason: str) -> None:
        """No commit from now on (see the module docstring)."""
        if self._closed is None:
            self._closed = reason
        self._wake()

    @contextlib.asynccontextmanager
    async def producing(self) -> AsyncIterator[None]:
        """Produce a batch's outcomes and ack its records inside this block."""
        await self._wait(lambda: not self._committing and not self._commits_waiting)
        self._producing += 1
        try:
            yield
        finally:
            self._producing -= 1
            self._wake()

    @contextlib.asynccontextmanager
    async def committing(self) -> AsyncIterator[bool]:
        """Commit inside this block, only if it yields True (neither closed nor suspended)."""
        self._commits_waiting += 1
        try:
            await self._wait(lambda: not self._producing and not self._committing)
        finally:
            self._commits_waiting -= 1
            self._wake()
        self._committing = True
        try:
            yield self._closed is None and not self._suspended
        finally:
            self._committing = False
            self._wake()

    async def _wait(self, ready: Callable[[], bool]) -> None:
        while not ready():
            changed = self._changed
            await changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
