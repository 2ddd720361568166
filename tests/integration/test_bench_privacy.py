"""Smoke test of the privacy benchmark: a tiny run ends with the JSON line of its keys."""

from __future__ import annotations

from pathlib import Path

from bench_runner import run_benchmark


def test_tiny_privacy_benchmark_reports_every_key(mnist_dir: Path) -> None:
    command = [
        "-m", "benchmarks.privacy", "--mnist-dir", str(mnist_dir),
        "--epochs", "1", "--train-limit", "200", "--batch-size", "50", "--accountant", "rdp",
    ]  # fmt: skip
    result, stdout = run_benchmark(command, timeout_s=300)
    for prefix in ("", "digits_"):
        for name in ("eps1_acc", "eps3_acc", "eps8_acc", "nonprivate_acc"):
            assert 0.0 <= result[prefix + name] <= 1.0, prefix + name
        for epsilon in (1, 3, 8):
            assert 0 < result[f"{prefix}eps{epsilon}_spent"] <= epsilon
        assert result[prefix + "train_samples"] == 200
    assert isinstance(result["goals"]["eps3_within_5_points"], bool)
    assert "DP eps=3" in stdout  # the table came before the JSON line
