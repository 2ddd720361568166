"""At-least-once across concurrent batches: a batch may be acked only after every earlier
record of its partitions has its outcome produced.

Faust acks the events of a `take()` / `take_events()` batch when the agent asks
for the next batch, and commits per partition the highest run of consecutive
acked offsets. With agent concurrency > 1 the actors share one queue, so one
partition's records are split between batches in flight at the same time, and
Faust (faust-streaming 0.15, `Consumer._new_offset`) does not stop a later batch's
acks from being committed past an earlier, unfinished batch: the check for a gap
before the first acked offset is skipped while the partition has no committed
offset (None or 0) and lets one missing offset through otherwise.

`OffsetGate` closes that hole from the agent's side. A stream processor calls
`received()` for each record as it is dequeued (dequeue order is offset order
within a partition); the agent calls `finished()` once a batch's outcomes are
acknowledged by the broker, then `wait_earlier()` before returning the batch to
Faust. Waiting only goes from later offsets to earlier ones, so it cannot deadlock.
Under exactly-once the agent waits before producing instead (`streams.commit_gate`), run
by run (`offset_runs`); a batch's own unfinished records never count as earlier ones.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence

Position = tuple[Hashable, int]  # (topic-partition, offset)


def offset_runs(positions: Sequence[Position]) -> list[list[int]]:
    """Indexes of `positions` grouped in runs of consecutive offsets of one partition, in
    order of first appearance. Concurrent actors interleave records, so one batch may hold
    offsets 1 and 50 of a partition while another holds 10-20; waiting per run (for the
    records before its first offset) never holds back an earlier record someone waits for."""
    runs: list[list[int]] = []
    last: dict[Hashable, tuple[int, list[int]]] = {}  # partition -> (offset, its run)
    for index, (tp, offset) in enumerate(positions):
        previous = last.get(tp)
        if previous is not None and previous[0] + 1 == offset:
            run = previous[1]
        else:
            run = []
            runs.append(run)
        run.append(index)
        last[tp] = (offset, run)
    return runs


class OffsetGate:
    """Records received but not finished, per partition (see the module docstring)."""

    def __init__(self) -> None:
        self._pending: defaultdict[Hashable, set[int]] = defaultdict(set)
        self._changed = asyncio.Event()

    def received(self, tp: Hashable, offset: int) -> None:
        """A record was taken off the queue; its outcome is not produced yet."""
        self._pending[tp].add(offset)

    def finished(self, positions: Iterable[Position]) -> None:
        """These records have their outcomes acknowledged by the broker."""
        for tp, offset in positions:
            pending = self._pending.get(tp)
            if pending is not None:
                pending.discard(offset)
                if not pending:
                    del self._pending[tp]
        self._wake()

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Partitions revoked: Faust re-reads them from the committed offset, whoever owns them."""
        for tp in tps:
            self._pending.pop(tp, None)
        self._wake()

    def blocking(self, positions: Iterable[Position]) -> bool:
        """Whether an earlier record of one of these partitions, not one of these records
        themselves, is still unfinished."""
        highest: dict[Hashable, int] = {}
        own: defaultdict[Hashable, set[int]] = defaultdict(set)
        for tp, offset in positions:
            highest[tp] = max(offset, highest.get(tp, offset))
            own[tp].add(offset)
        for tp, high in highest.items():
            pending = self._pending.get(tp)
            if pending and any(offset < high for offset in pending - own[tp]):
                return True
        return False

    async def wait_earlier(self, positions: Iterable[Position]) -> None:
        """Return once every record before these (in their partitions) is finished."""
        wanted = list(positions)
        while self.blocking(wanted):
            changed = self._changed
            await changed.wait()

    def pending(self) -> int:
        return sum(len(offsets) for offsets in self._pending.values())

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
