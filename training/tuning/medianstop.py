"""NNI's median stopping rule, judging only once a few trials have finished; loaded by class name.

NNI 3.0's `MedianstopAssessor` stops a trial at step S when its best loss so far
is worse than the median of the finished trials' running averages at S. It
applies the rule from the first finished trial on, when that "median" is one
trial's curve: every trial that starts slower than the first finished one is
stopped, good or not. A trial it stops reaches the tuner with the loss it had
when stopped, so TPE (which splits the trials into its few best and the rest)
sees a slow starter that would have ended among the best as one of the rest,
and proposes other configurations from then on.

`HeadraceMedianstop` is NNI's rule with one addition, the guard Ray Tune's
`MedianStoppingRule` (`min_samples_required`) and Optuna's `MedianPruner`
(`n_startup_trials`) have: no trial is stopped before `min_completed` trials
have run to their end. Everything else (which results count, the median, the
start step) is NNI's.
"""

from __future__ import annotations

from typing import Any, Literal

from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor
from nni.assessor import AssessResult


class HeadraceMedianstop(MedianstopAssessor):
    """NNI's `MedianstopAssessor` that says Good until `min_completed` trials have finished."""

    def __init__(
        self,
        optimize_mode: Literal["minimize", "maximize"] = "maximize",
        start_step: int = 0,
        min_completed: int = 3,
    ) -> None:
        super().__init__(optimize_mode=optimize_mode, start_step=start_step)
        if min_completed < 1:
            raise ValueError(f"min_completed must be >= 1, got {min_completed}")
        self._min_completed = min_completed

    @property
    def completed(self) -> int:
        """Trials that ran to their end (the ones the median is taken over)."""
        return len(self._completed_avg_history)

    def assess_trial(self, trial_job_id: Any, trial_history: list[Any]) -> AssessResult:
        # NNI's own call records the trial's history, which it needs at trial_end
        verdict: AssessResult = super().assess_trial(trial_job_id, trial_history)
        if self.completed < self._min_completed:
            return AssessResult.Good
        return verdict
