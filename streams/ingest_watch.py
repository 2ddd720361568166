"""When the ingestion worker must seek a partition back to its shards' coverage; no Kafka here.

Faust can lose deliveries without any error. Seen in tests/integration/test_data_ingest.py
after a restart: Faust's table recovery resumes the data partitions, then seeks them to the
committed offsets while its fetcher already runs. Records fetched before that seek are
delivered after it and move Faust's read position forward, so it drops the re-read copies
as already seen; then resuming the flow clears the stream buffer that held the early
copies. The partition's records are gone from this worker's view until something seeks
it again: the worker stalled with records unread, and a batch that saw a gap held its
records to the end.

So the worker does not wait for records to come. `PartitionWatch` keeps, per assigned
partition, when its coverage last advanced and whether a gap was seen (a record beyond the
coverage, which `streams.ingest.plan_batch` holds back). The worker asks it every
`CHECK_INTERVAL_S` and after a batch with a gap; it answers with the offset to seek to:

- a gap, or no progress for `STALL_S`, while the consumer has fetched past the coverage
  (its position is beyond it): seek to the coverage, at most once per `SEEK_INTERVAL_S`;
- a partition that stays stuck for `GIVE_UP_S` despite the seeks (records deleted by
  retention, or shards of another topic) raises `DatasetError`, which stops the worker.

A seek that was not needed (records still waiting in the stream buffer on a slow machine)
only makes the worker read records again, which `plan_batch` skips as already covered.
"""

from __future__ import annotations

from dataclasses import dataclass

from headrace.errors import DatasetError

CHECK_INTERVAL_S = 1.0
STALL_S = 2.0
SEEK_INTERVAL_S = 0.8  # under CHECK_INTERVAL_S: a late tick still seeks again
GIVE_UP_S = 30.0


@dataclass
class _Partition:
    progress_at: float
    gap: bool = False
    stuck_since: float | None = None
    last_seek: float | None = None


class PartitionWatch:
    """Per partition of the data topic: progress, gaps, and the seeks they call for."""

    def __init__(
        self,
        stall_s: float = STALL_S,
        seek_interval_s: float = SEEK_INTERVAL_S,
        give_up_s: float = GIVE_UP_S,
    ) -> None:
        if not 0 < seek_interval_s <= give_up_s or stall_s <= 0:
            raise ValueError("need 0 < seek_interval_s <= give_up_s and stall_s > 0")
        self.stall_s, self.seek_interval_s, self.give_up_s = stall_s, seek_interval_s, give_up_s
        self._partitions: dict[int, _Partition] = {}

    def __contains__(self, partition: int) -> bool:
        return partition in self._partitions

    def assigned(self, partition: int, now: float) -> None:
        """The partition's state was (re)loaded: its clock starts now."""
        self._partitions[partition] = _Partition(progress_at=now)

    def forget(self, partition: int) -> None:
        """The partition was revoked."""
        self._partitions.pop(partition, None)

    def progressed(self, partition: int, now: float) -> None:
        """A shard advanced the partition's coverage: any gap is closed."""
        self._partitions[partition] = _Partition(progress_at=now)

    def gap(self, partition: int, now: float) -> None:
        """A record beyond the coverage arrived (held back by its batch)."""
        self._partitions.setdefault(partition, _Partition(progress_at=now)).gap = True

    def needs_position(self, partition: int, now: float) -> bool:
        """Whether `seek_to` could answer with an offset now (so the position is worth asking)."""
        state = self._partitions.get(partition)
        if state is None:
            return False
        return state.gap or state.stuck_since is not None or now - state.progress_at >= self.stall_s

    def seek_to(
        self, partition: int, coverage: int, position: int | None, now: float
    ) -> int | None:
        """The offset to seek `partition` to (its coverage), or None; `position` is the
        consumer's next fetch offset. Raises `DatasetError` once it is stuck for `give_up_s`."""
        state = self._partitions.get(partition)
        if state is None:
            return None
        stalled = now - state.progress_at >= self.stall_s
        behind = position is not None and position > coverage
        if not state.gap and not (stalled and behind):
            state.stuck_since = None  # caught up, or still within its time to deliver
            return None
        if state.stuck_since is None:
            state.stuck_since = now
        if now - state.stuck_since > self.give_up_s:
            raise DatasetError(
                f"partition {partition}: the records from offset {coverage} on could not be "
                f"read for {self.give_up_s:g} s despite seeking back to them (deleted by "
                "retention, or these shards belong to another topic); ingest into a new "
                "--data-root"
            )
        if not behind:
            return None  # a seek already moved the consumer back; the records are on the way
        if state.last_seek is not None and now - state.last_seek < self.seek_interval_s:
            return None
        state.last_seek = now
        return coverage
