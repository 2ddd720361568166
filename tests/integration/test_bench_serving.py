"""Smoke test of the serving benchmark: a quick run ends with a JSON line of real numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMAND = [
    "-m", "benchmarks.serving", "--quick", "--skip-rayserve",
    "--models", "lenet5", "--streams", "1", "8",
]  # fmt: skip


def test_quick_serving_benchmark_reports_headrace_throughput() -> None:
    done = subprocess.run(
        [sys.executable, *COMMAND],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["lenet_batched_qps"] > 0
    assert result["lenet_unbatched_qps"] > 0
    assert result["lenet_transport_ceiling_qps"] > 0
    assert result["lenet_rayserve_qps"] is None  # skipped
    assert result["errors_total"] == 0
    assert "headrace batched" in done.stdout  # the table came before the JSON line
