"""Smoke test of the tuning benchmark: a quick run ends with a JSON line of real numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_runner import run_benchmark

from benchmarks.tuning_search import (
    Search,
    SearchResult,
    SearchSettings,
    TunerName,
    run_searches,
)
from training.config import TrainConfig
from training.tuning.search_space import DEFAULT_SEARCH_SPACE
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


def test_searches_taking_turns_give_what_each_gives_alone(tmp_path: Path) -> None:
    """The benchmark runs a seed's searches a trial each in turn: each keeps its own tuner and
    seeded training, so the turns change no trial's parameters or result."""
    base = TrainConfig(model="lenet5", dataset="digits", epochs=1, publish=False,
                       progress=False, runs_dir=tmp_path)  # fmt: skip

    def settings(tuner: TunerName, assessor: bool) -> SearchSettings:
        return SearchSettings(tuner=tuner, seed=3, trials=4, tpe_startup=2, assessor=assessor,
                              assessor_start_step=1, assessor_min_completed=1)  # fmt: skip

    kinds: list[tuple[TunerName, bool]] = [("random", False), ("tpe", False), ("tpe", True)]
    alone = [
        run_searches([Search(settings(t, a), base, DEFAULT_SEARCH_SPACE)])[0] for t, a in kinds
    ]
    turns = run_searches([Search(settings(t, a), base, DEFAULT_SEARCH_SPACE) for t, a in kinds])

    def outcomes(result: SearchResult) -> list[tuple[object, ...]]:
        return [(t.params, t.status, t.best_val_loss, t.epochs_run) for t in result.trials]

    assert [outcomes(r) for r in turns] == [outcomes(r) for r in alone]
    assert all(len(r.trials) == 4 and r.seconds > 0 for r in turns)
    assert outcomes(turns[0]) != outcomes(turns[1])  # two tuners, not one search three times


def test_luck_benchmark_ranks_the_random_search_among_its_draws() -> None:
    command = ["-m", "benchmarks.tuning_luck", "--draws", "4", "--trials", "2", "--epochs", "1",
               "--seeds", "0"]  # fmt: skip
    result, _ = run_benchmark(command, timeout_s=120)
    (row,) = result["per_seed"]
    # the Random search is the first 2 of the 4 draws: never better than the best of all 4
    assert row["random_best_of_draws"] <= row["random_best_val_loss"]
    assert row["random_best_of_draws"] <= row["random_expected_best_val_loss"]
    assert 1 <= row["random_best_rank"] <= 3
    assert result["tpe_over_expected_random"] == pytest.approx(
        result["tpe_best_val_loss"] / result["random_expected_best_val_loss"], abs=1e-3
    )
