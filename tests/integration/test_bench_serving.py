"""Smoke test of the serving benchmark: a quick run ends with a JSON line of real numbers."""

from __future__ import annotations

from bench_runner import run_benchmark

COMMAND = [
    "-m", "benchmarks.serving", "--quick", "--skip-rayserve", "--aa-check",
    "--models", "lenet5", "--streams", "1", "8",
    "--duration-s", "0.5",  # --quick's 1 s per point measures better; the keys come either way
]  # fmt: skip


def test_quick_serving_benchmark_reports_headrace_throughput() -> None:
    result, stdout = run_benchmark(COMMAND, timeout_s=60)
    assert result["lenet_batched_qps"] > 0
    assert result["lenet_unbatched_qps"] > 0
    assert result["lenet_transport_ceiling_qps"] > 0
    assert result["lenet_rayserve_qps"] is None  # skipped
    assert result["lenet_batched_stream_rpc_qps"] > 0  # over ModelStreamInfer
    assert result["lenet_transport_stream_rpc_qps"] > 0
    assert set(result["aa_first_over_second"]) == {"lenet5@1", "lenet5@8"}  # --aa-check
    assert result["errors_total"] == 0
    assert "headrace batched" in stdout  # the table came before the JSON line
