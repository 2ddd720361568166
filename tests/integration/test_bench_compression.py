"""Smoke test of the compression benchmark: a quick run ends with a JSON line of the issue keys."""

from __future__ import annotations

from bench_runner import run_benchmark

KEYS = (
    "fp32_acc", "int8_acc", "int4_acc", "int8_size_ratio", "int4_size_ratio",
    "pruned_param_ratio", "pruned_latency_ratio",
)  # fmt: skip
GOALS = (
    "int8_loss_lt_0.5pt", "int8_size_le_1/3.5", "int4_loss_lt_1pt", "int4_size_le_1/6",
    "pruned_fewer_params", "pruned_faster",
)  # fmt: skip


def test_quick_compression_benchmark_reports_every_key() -> None:
    result, stdout = run_benchmark(["-m", "benchmarks.compression", "--quick"], timeout_s=240)
    for key in KEYS:
        assert isinstance(result[key], float) and result[key] > 0, (key, result[key])
    for key in ("fp32_acc", "int8_acc", "int4_acc"):
        assert 0.0 < result[key] <= 1.0
    assert result["int4_size_ratio"] < result["int8_size_ratio"] < 1.0
    assert result["pruned_param_ratio"] < 1.0  # channels really removed, even in a quick run
    assert result["latency_batch"] == 64
    assert sorted(result["goals"]) == sorted(GOALS)
    assert all(isinstance(v, bool) for v in result["goals"].values())
    assert "prune-l1-0.5" in stdout and "b64 ms" in stdout  # the table came first
