"""Smoke test of the streaming benchmark: a quick run ends with a JSON line of real numbers."""

from __future__ import annotations

import os

from bench_runner import REPO_ROOT, run_benchmark

COMMAND = [
    "-m", "benchmarks.streaming", "--quick", "--models", "lenet5", "--formats", "binary",
]  # fmt: skip


def test_quick_streaming_benchmark_reports_pipeline_throughput() -> None:
    env = dict(os.environ)  # opacus installs a top-level `benchmarks` too: ours must win
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result, stdout = run_benchmark(COMMAND, timeout_s=90, env=env)
    assert result["lenet_pipeline_rps"] > 0
    assert result["lenet_naive_rps"] > 0
    assert result["broker_ceiling_rps"] > 0
    assert result["resnet_pipeline_rps"] is None  # not asked for
    assert result["dlq_total"] == 0
    assert "pipeline" in stdout  # the table came before the JSON line
