"""Smoke test of the robustness benchmark: a tiny run ends with a JSON line of real numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMAND = [
    "-m", "benchmarks.robustness", "--dataset", "digits", "--epochs", "1",
    "--undefended-epochs", "1", "--train-steps", "2", "--train-step-size", "0.2",
    "--warmup-epochs", "0", "--eval-steps", "3", "--limit", "40",
]  # fmt: skip


def test_tiny_robustness_benchmark_reports_every_key() -> None:
    done = subprocess.run(
        [sys.executable, *COMMAND],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("clean_acc", "undefended_robust_acc", "defended_robust_acc"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["undefended_clean_acc"] > 0.5  # one clean epoch on digits learns something
    assert result["defended_robust_acc"] <= result["defended_robust_acc_issue_step"]
    assert result["test_samples"] == 40 and result["eval_pgd_steps"] == 3
    assert isinstance(result["goals"]["defended_robust_ge_75pct"], bool)
    assert "pgd-trained" in done.stdout  # the table came before the JSON line
