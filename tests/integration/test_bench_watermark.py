"""Smoke test of the watermark benchmark: a quick run ends with a JSON line of the issue's keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYS = ("wm_pvalue", "clean_min_pvalue", "after_finetune_pvalue", "after_prune_pvalue")


def test_quick_watermark_benchmark_reports_every_key() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.watermark", "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert 0.0 <= result[key] <= 1.0, (key, result[key])
    assert -100.0 <= result["acc_drop"] <= 100.0
    assert 0.0 <= result["whitebox_ber"] <= 1.0
    assert len(result["goals"]) == 6 and all(isinstance(v, bool) for v in result["goals"].values())
    assert "unmarked-seed1" in done.stdout and "marked-pruned" in done.stdout  # the table
