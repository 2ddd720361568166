"""Smoke test of the robustness benchmark: a tiny run ends with a JSON line of real numbers."""

from __future__ import annotations

import subprocess
import sys

from bench_runner import REPO_ROOT, run_benchmark

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


def test_a_warmup_longer_than_the_run_is_refused_before_anything_trains() -> None:
    # The default --warmup-epochs 3 with --epochs 1: the defended run's config is refused, and
    # the benchmark says so at once, in its own flags, not after training the undefended model.
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.robustness", "--dataset", "digits", "--epochs", "1",
         "--train-step-size", "0.2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "adversarial warm-up of 3 epochs is longer than the 1 epochs" in done.stderr
    assert "lower --warmup-epochs or raise --epochs" in done.stderr
    assert "Traceback" not in done.stderr and "epoch 1:" not in done.stderr  # nothing trained
