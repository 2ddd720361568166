"""Smoke test of the streaming benchmark: a quick run ends with a JSON line of real numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMAND = [
    "-m", "benchmarks.streaming", "--quick", "--models", "lenet5", "--formats", "binary",
]  # fmt: skip


def test_quick_streaming_benchmark_reports_pipeline_throughput() -> None:
    env = dict(os.environ)  # opacus installs a top-level `benchmarks` too: ours must win
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, *COMMAND],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["lenet_pipeline_rps"] > 0
    assert result["lenet_naive_rps"] > 0
    assert result["broker_ceiling_rps"] > 0
    assert result["resnet_pipeline_rps"] is None  # not asked for
    assert result["dlq_total"] == 0
    assert "pipeline" in done.stdout  # the table came before the JSON line
