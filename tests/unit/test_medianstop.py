"""HeadraceMedianstop: NNI's median stopping rule that waits for a few finished trials."""

from __future__ import annotations

import random

import pytest
from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor
from nni.assessor import AssessResult

from training.tuning.medianstop import HeadraceMedianstop


def _finish(assessor: MedianstopAssessor, trial: str, losses: list[float]) -> None:
    """Report `losses` one epoch at a time, then end the trial as succeeded."""
    for step in range(1, len(losses) + 1):
        assessor.assess_trial(trial, losses[:step])
    assessor.trial_end(trial, True)


def test_no_trial_is_stopped_before_min_completed_trials_finish() -> None:
    assessor = HeadraceMedianstop(optimize_mode="minimize", start_step=1, min_completed=3)
    slow = [2.0, 1.9]  # far worse than every finished trial at both steps
    for n in range(2):
        _finish(assessor, f"done-{n}", [0.5, 0.3])
        assert assessor.assess_trial(f"slow-{n}", slow) is AssessResult.Good
    _finish(assessor, "done-2", [0.5, 0.3])
    assert assessor.completed == 3
    assert assessor.assess_trial("slow-2", slow) is AssessResult.Bad
    assert assessor.assess_trial("fast", [0.4, 0.2]) is AssessResult.Good


def test_stopped_trials_do_not_count_as_finished() -> None:
    assessor = HeadraceMedianstop(optimize_mode="minimize", start_step=1, min_completed=2)
    _finish(assessor, "done", [0.5, 0.3])
    assessor.assess_trial("stopped", [3.0])
    assessor.trial_end("stopped", False)
    assert assessor.completed == 1
    assert assessor.assess_trial("slow", [2.0, 1.9]) is AssessResult.Good


def test_with_min_completed_one_it_says_what_nni_says() -> None:
    rng = random.Random(7)
    ours = HeadraceMedianstop(optimize_mode="minimize", start_step=2, min_completed=1)
    nni = MedianstopAssessor(optimize_mode="minimize", start_step=2)
    verdicts = []
    for trial in range(12):
        losses = [rng.uniform(0.05, 2.5) for _ in range(6)]
        for step in range(1, 7):
            mine = ours.assess_trial(str(trial), losses[:step])
            assert mine is nni.assess_trial(str(trial), losses[:step])
            verdicts.append(mine)
            if mine is AssessResult.Bad:
                break
        success = verdicts[-1] is AssessResult.Good
        ours.trial_end(str(trial), success)
        nni.trial_end(str(trial), success)
    assert AssessResult.Bad in verdicts and AssessResult.Good in verdicts


def test_min_completed_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="min_completed must be >= 1"):
        HeadraceMedianstop(optimize_mode="minimize", min_completed=0)
