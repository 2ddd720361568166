"""`AssignmentWatch`: the stuck-consumer-group warning of the stream worker and the training
agent, on a clock the test moves."""

from __future__ import annotations

import logging

import pytest

from streams.group_watch import UNASSIGNED_WARN_S, AssignmentWatch


def test_warns_each_interval_while_unassigned_and_stops_once_assigned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    watch = AssignmentWatch("g1", "agents", "training-jobs", clock=lambda: now[0])
    messages = []
    with caplog.at_level(logging.WARNING, logger="streams.group_watch"):
        for waited in (1.0, UNASSIGNED_WARN_S - 0.1, UNASSIGNED_WARN_S + 0.3, 21.0, 45.0, 130.0):
            now[0] = 100.0 + waited
            assert watch.check(assigned=False) is True
            messages.append(len(caplog.records))
        now[0] += 1
        assert watch.check(assigned=True) is False
    assert messages == [0, 0, 1, 1, 2, 3]  # a long gap between checks: one warning, not four
    first, second, third = (r.getMessage() for r in caplog.records)
    assert first.startswith("no partitions assigned after 20 s: consumer group 'g1' has not ")
    assert "run the agents with another --group (a new group reads training-jobs from" in first
    assert second.startswith("no partitions assigned after 45 s")
    assert third.startswith("no partitions assigned after 130 s")


def test_the_interval_is_the_one_given(caplog: pytest.LogCaptureFixture) -> None:
    """HEADRACE_UNASSIGNED_WARN_S reaches the watch as `warn_s` (test_cli_flags_reach_config)."""
    now = [0.0]
    watch = AssignmentWatch("g1", "workers", "inference-requests", 3.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="streams.group_watch"):
        for waited in (2.9, 3.0, 5.9, 6.5):
            now[0] = waited
            watch.check(assigned=False)
    assert [r.getMessage()[:30] for r in caplog.records] == [
        "no partitions assigned after 3",
        "no partitions assigned after 6",
    ]
