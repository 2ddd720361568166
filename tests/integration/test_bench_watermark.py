"""Smoke test of the watermark benchmark: a quick run ends with a JSON line of the issue's keys."""

from __future__ import annotations

from bench_runner import run_benchmark

KEYS = ("wm_pvalue", "clean_min_pvalue", "after_finetune_pvalue", "after_prune_pvalue")


def test_quick_watermark_benchmark_reports_every_key() -> None:
    result, stdout = run_benchmark(["-m", "benchmarks.watermark", "--quick"], timeout_s=240)
    for key in KEYS:
        assert 0.0 <= result[key] <= 1.0, (key, result[key])
    assert -100.0 <= result["acc_drop"] <= 100.0
    assert 0.0 <= result["whitebox_ber"] <= 1.0
    assert len(result["goals"]) == 6 and all(isinstance(v, bool) for v in result["goals"].values())
    assert "unmarked-seed1" in stdout and "marked-pruned" in stdout  # the table
