"""The serving benchmark's arithmetic: windows merged into one row, and the batching verdict."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.serving_report import (
    AA_SYSTEMS,
    SAME_PATH_NOISE,
    Row,
    Settings,
    merge_windows,
    summarize,
)


def window(requests: int, duration_s: float, **extra: Any) -> dict[str, Any]:
    """A load generator result as `benchmarks.loadgen` prints it."""
    return {
        "streams": 8,
        "rows_per_request": 1,
        "duration_s": duration_s,
        "requests": requests,
        "qps": round(requests / duration_s, 1),
        "errors": 0,
        "error_kinds": {},
        "server_cpu_pct": 100.0,
        "client_cpu_pct": 40.0,
        "machine_cpu_pct": 140.0,
        **extra,
    }


def test_merged_rate_is_over_the_summed_time_and_percentiles_over_every_latency() -> None:
    fast = np.full(300, 1.0)  # ms
    slow = np.full(100, 9.0)
    row = merge_windows(
        "headrace batched",
        "lenet5",
        [
            (window(300, 1.0, error_kinds={"UNAVAILABLE": 2}, errors=2), fast),
            (window(100, 1.0, server_cpu_pct=50.0), slow),
        ],
    )
    assert row.qps == 200.0  # 400 requests in 2 s, not the mean of two rounded rates
    assert row.p50_ms == 1.0
    assert row.p99_ms == 9.0  # the slow window's tail is not averaged away
    assert row.errors == 2
    assert row.server_cpu_pct == 75.0
    assert "UNAVAILABLE=2" in row.note
    assert "300 / 100" in row.note


def rows(batched: float, unbatched: float) -> list[Row]:
    return [
        Row("headrace batched", "lenet5", 1, batched, batched),
        Row("headrace unbatched", "lenet5", 1, unbatched, unbatched),
    ]


SETTINGS = Settings(
    models=["lenet5"],
    streams=[1],
    duration_s=1.0,
    warmup_s=0.1,
    ort_seconds=0.1,
    skip_rayserve=True,
    client_batch=1,
    stream_rpc=False,
    aa_check=False,
    streams_per_channel=16,
    max_queue_delay_us=2000,
    server_cpus=None,
    client_cpu=None,
)


@pytest.mark.parametrize(
    ("batched", "strictly_slower", "beyond_noise"),
    [
        (1000.0, False, False),
        (999.9, True, False),  # strictly below, though its ratio rounds to 1.0
        (1000.0 * (1 - SAME_PATH_NOISE / 2), True, False),
        (1000.0 * (1 - 2 * SAME_PATH_NOISE), True, True),
    ],
)
def test_batching_counts_as_slower_only_beyond_the_noise_of_identical_endpoints(
    batched: float, strictly_slower: bool, beyond_noise: bool
) -> None:
    out = summarize(rows(batched, 1000.0), SETTINGS)
    assert out["batched_over_unbatched"] == {"lenet5@1": round(batched / 1000.0, 3)}
    assert out["batched_slower_than_unbatched_at"] == (["lenet5@1"] if strictly_slower else [])
    assert out["batched_slower_beyond_noise_at"] == (["lenet5@1"] if beyond_noise else [])
    assert out["goals"]["batching_never_slower"] is not beyond_noise


def test_the_aa_check_reports_the_gap_between_identical_servers() -> None:
    same = [
        Row(AA_SYSTEMS[0], "lenet5", 1, 960.0, 960.0),
        Row(AA_SYSTEMS[1], "lenet5", 1, 1000.0, 1000.0),
    ]
    out = summarize(rows(1000.0, 1000.0) + same, SETTINGS)
    assert out["aa_first_over_second"] == {"lenet5@1": 0.96}
    assert out["aa_largest_gap"] == 0.04
    assert "aa_largest_gap" not in summarize(rows(1000.0, 1000.0), SETTINGS)  # no --aa-check
