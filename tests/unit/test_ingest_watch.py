"""`streams.ingest_watch.PartitionWatch`: when the ingestion worker seeks a partition back."""

from __future__ import annotations

import pytest

from headrace.errors import DatasetError
from streams.ingest_watch import PartitionWatch


def watch() -> PartitionWatch:
    return PartitionWatch(stall_s=2.0, seek_interval_s=1.0, give_up_s=30.0)


def test_a_partition_that_keeps_up_or_is_caught_up_is_never_sought() -> None:
    w = watch()
    w.assigned(0, now=0.0)
    assert not w.needs_position(0, now=1.9)
    assert w.seek_to(0, coverage=10, position=50, now=1.9) is None  # within its time to deliver
    w.progressed(0, now=1.5)
    assert not w.needs_position(0, now=3.0)
    assert w.needs_position(0, now=3.6)
    assert w.seek_to(0, coverage=50, position=50, now=100.0) is None  # idle and caught up
    assert w.seek_to(0, coverage=50, position=None, now=100.0) is None  # position unknown


def test_a_stalled_partition_is_sought_back_to_its_coverage_at_most_once_a_second() -> None:
    w = watch()
    w.assigned(1, now=0.0)
    assert w.seek_to(1, coverage=65, position=99, now=2.5) == 65  # fetched past it, nothing came
    assert w.seek_to(1, coverage=65, position=99, now=3.0) is None  # sought 0.5 s ago
    assert w.seek_to(1, coverage=65, position=65, now=3.6) is None  # the seek moved it back
    assert w.seek_to(1, coverage=65, position=99, now=3.6) == 65  # still nothing: again
    w.progressed(1, now=4.0)  # the records arrived
    assert w.seek_to(1, coverage=99, position=99, now=10.0) is None


def test_a_gap_is_sought_at_once_and_closes_with_progress() -> None:
    w = watch()
    w.assigned(2, now=0.0)
    w.gap(2, now=0.1)
    assert w.needs_position(2, now=0.1)
    assert w.seek_to(2, coverage=7, position=12, now=0.1) == 7
    assert w.seek_to(2, coverage=7, position=7, now=5.0) is None  # records on their way
    w.progressed(2, now=5.5)
    assert not w.needs_position(2, now=5.6)
    assert w.seek_to(2, coverage=12, position=12, now=5.6) is None


def test_a_partition_stuck_despite_seeks_stops_the_worker_with_a_fix() -> None:
    w = watch()
    w.assigned(3, now=0.0)
    w.gap(3, now=0.0)  # e.g. its records below offset 40 were deleted by retention
    for second in range(31):
        w.seek_to(3, coverage=5, position=40, now=float(second))
    with pytest.raises(DatasetError, match="offset 5 on .* --data-root"):
        w.seek_to(3, coverage=5, position=40, now=31.0)


def test_revoked_or_unknown_partitions_are_left_alone() -> None:
    w = watch()
    w.assigned(0, now=0.0)
    w.forget(0)
    assert 0 not in w and not w.needs_position(0, now=100.0)
    assert w.seek_to(0, coverage=0, position=10, now=100.0) is None
    with pytest.raises(ValueError):
        PartitionWatch(stall_s=1.0, seek_interval_s=5.0, give_up_s=2.0)
