"""Smoke test of the robustness benchmark: a tiny run ends with a JSON line of real numbers."""

from __future__ import annotations

from bench_runner import run_benchmark

COMMAND = [
    "-m", "benchmarks.robustness", "--dataset", "digits", "--epochs", "1",
    "--undefended-epochs", "1", "--train-steps", "2", "--train-step-size", "0.2",
    "--warmup-epochs", "0", "--eval-steps", "3", "--limit", "40",
]  # fmt: skip


def test_tiny_robustness_benchmark_reports_every_key() -> None:
    result, stdout = run_benchmark(COMMAND, timeout_s=300)
    for key in ("clean_acc", "undefended_robust_acc", "defended_robust_acc"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["undefended_clean_acc"] > 0.5  # one clean epoch on digits learns something
    assert result["defended_robust_acc"] <= result["defended_robust_acc_issue_step"]
    assert result["test_samples"] == 40 and result["eval_pgd_steps"] == 3
    assert isinstance(result["goals"]["defended_robust_ge_75pct"], bool)
    assert "pgd-trained" in stdout  # the table came before the JSON line
