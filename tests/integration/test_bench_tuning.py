"""Smoke test of the tuning benchmark: a quick run ends with a JSON line of real numbers."""

from __future__ import annotations

from bench_runner import run_benchmark

from training.tuning.tuners import MEDIANSTOP_MIN_COMPLETED

COMMAND = [
    "-m", "benchmarks.tuning", "--quick",
    "--trials", "3", "--epochs", "2", "--seeds", "0", "--tpe-startup", "2",
    "--assessor-start-step", "1",
]  # fmt: skip


def test_quick_tuning_benchmark_reports_every_key() -> None:
    result, stdout = run_benchmark(COMMAND, timeout_s=120)
    for key in ("tpe_best_val_loss", "random_best_val_loss", "assessor_time_saved_pct"):
        assert isinstance(result[key], float), (key, result[key])
    assert result["tpe_best_val_loss"] > 0
    assert result["random_best_val_loss"] > 0
    assert result["assessor_time_saved_pct"] < 100
    # a delta is None only when every trial of a search was stopped or failed
    assert result["assessor_best_val_loss_delta"] is None or isinstance(
        result["assessor_best_val_loss_delta"], float
    )
    assert set(result["goals"]) == {
        "tpe_le_0.8x_random",
        "assessor_saves_40pct",
        "assessor_no_worse",
    }
    assert all(isinstance(v, bool) for v in result["goals"].values())
    (seed,) = result["per_seed"]
    assert seed["seed"] == 0
    # the same budget: every search ran the same number of trials
    assert result["settings"]["trials"] == 3 and result["settings"]["epochs"] == 2
    assert result["settings"]["tpe"]["n_startup_jobs"] == 2
    # the assessor is the one `headrace tune` runs, with its guard
    assert result["settings"]["assessor"]["min_completed"] == MEDIANSTOP_MIN_COMPLETED
    assert seed["random_epochs"] <= 3 * 2 and seed["tpe_epochs"] <= 3 * 2
    assert "tpe+assessor" in stdout  # the table came before the JSON line
