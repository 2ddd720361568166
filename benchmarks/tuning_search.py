"""One hyper-parameter search driven in-process by NNI's own tuner and assessor classes.

The tuning benchmark (benchmarks/tuning.py) runs many searches; this module runs
one. Trials run one after another in this process, and each NNI object is called
the way NNI's dispatcher (nni/runtime/msg_dispatcher.py) calls it in a
`headrace tune` experiment:

- the tuner gets `update_search_space(space)` once, then per trial
  `generate_parameters(parameter_id)`;
- every epoch's validation loss is an intermediate result: the assessor's
  `assess_trial(trial_job_id, history)` sees the whole history so far, and
  `AssessResult.Bad` stops the trial there (NNI kills the trial process);
- a trial that ran to its end sends its final result, its best validation
  loss, to `receive_trial_result(parameter_id, parameters, value)`; an
  early-stopped (killed) or failed trial sends none: NNI 3.0's TPE ignores such
  trials "as if they were never submitted" (microsoft/nni#5332). With
  `early_stopped="last"` the trial's last intermediate result is sent as its final
  one instead, as the dispatcher's `_earlystop_notify_tuner` does when the
  deprecated includeIntermediateResults setting is on (as `headrace tune` sets it);
- at the end of a trial the assessor gets `trial_end(trial_job_id, success)` (if
  it saw intermediate results) and the tuner `trial_end(parameter_id, success)`,
  where success means the trial ran to its end.

What is not the same as `headrace tune`: no NNI manager, no trial processes and
no web UI, so the wall time measures the search itself (training plus the
tuner's and assessor's own work) without NNI's per-trial process start-up.
A `Search` runs one trial per `step`, so that `run_searches` can let several
searches take turns.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nni.algorithms.hpo.random_tuner import RandomTuner
from nni.algorithms.hpo.tpe_tuner import TpeTuner
from nni.assessor import AssessResult

from headrace.errors import TrainingDiverged
from training.config import TrainConfig
from training.tuning.medianstop import HeadraceMedianstop
from training.tuning.objective import run_trial
from training.tuning.search_space import apply_params

TunerName = Literal["tpe", "random"]
TrialStatus = Literal["succeeded", "early_stopped", "failed"]
EarlyStopped = Literal["ignore", "last"]
"""What the tuner learns of an early-stopped trial: nothing (NNI 3.0's default), or its
last intermediate result as the final one (`headrace tune`: the dispatcher's deprecated
includeIntermediateResults path, `_earlystop_notify_tuner`)."""


@dataclass(frozen=True)
class SearchSettings:
    """What one search is given: the same budget whichever tuner runs it."""

    tuner: TunerName
    seed: int  # seeds the tuner and the training (TrainConfig.seed)
    trials: int
    tpe_startup: int  # TPE's n_startup_jobs: random trials before the model is used
    assessor: bool  # Medianstop on or off
    assessor_start_step: int  # Medianstop's start_step: epochs reported before it may stop
    early_stopped: EarlyStopped = "ignore"
    assessor_min_completed: int = 1  # finished trials before Medianstop stops any (1: NNI's rule)


@dataclass
class TrialRecord:
    """One trial: its sampled parameters and what training it gave."""

    trial_id: int
    params: dict[str, Any]
    status: TrialStatus
    best_val_loss: float | None  # None when the trial failed (diverged)
    epochs_run: int
    seconds: float


@dataclass
class SearchResult:
    """A finished search: every trial, and the time the search's own steps took."""

    settings: SearchSettings
    trials: list[TrialRecord] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the search's own trials (with the tuner's work)
    cpu_seconds: float = 0.0  # this process's CPU time over them (less sensitive to load)

    @property
    def best_val_loss(self) -> float:
        """Best final result the tuner received: the best trial that ran to its end.

        Early-stopped trials are left out, as NNI reports no final metric for a
        killed trial; `inf` when no trial ran to its end.
        """
        finals = [
            t.best_val_loss
            for t in self.trials
            if t.status == "succeeded" and t.best_val_loss is not None
        ]
        return min(finals, default=math.inf)

    @property
    def median_val_loss(self) -> float:
        """Median best validation loss of the trials that ran to their end (`inf`: none did)."""
        finals = sorted(
            t.best_val_loss
            for t in self.trials
            if t.status == "succeeded" and t.best_val_loss is not None
        )
        return finals[len(finals) // 2] if finals else math.inf

    @property
    def best_params(self) -> dict[str, Any] | None:
        done = [t for t in self.trials if t.status == "succeeded" and t.best_val_loss is not None]
        if not done:
            return None
        return min(done, key=lambda t: t.best_val_loss or math.inf).params

    @property
    def epochs_run(self) -> int:
        return sum(t.epochs_run for t in self.trials)

    def count(self, status: TrialStatus) -> int:
        return sum(1 for t in self.trials if t.status == status)


class _Intermediate:
    """A trial's intermediate results, each shown to the assessor as NNI's dispatcher does."""

    def __init__(self, trial_job_id: str, assessor: HeadraceMedianstop | None) -> None:
        self.trial_job_id = trial_job_id
        self.assessor = assessor
        self.history: list[float] = []

    def report(self, epoch: int, val_loss: float) -> bool:
        """One epoch's validation loss; True asks the trial to stop (the assessor said Bad)."""
        self.history.append(float(val_loss))
        if self.assessor is None:
            return False
        verdict = self.assessor.assess_trial(self.trial_job_id, list(self.history))
        if isinstance(verdict, bool):  # the dispatcher accepts a bool too
            verdict = AssessResult.Good if verdict else AssessResult.Bad
        return verdict is AssessResult.Bad


def make_tuner(settings: SearchSettings) -> TpeTuner | RandomTuner:
    """The NNI tuner `headrace tune` would use for this name, seeded."""
    if settings.tuner == "tpe":
        return TpeTuner(
            optimize_mode="minimize",
            seed=settings.seed,
            tpe_args={"n_startup_jobs": settings.tpe_startup},
        )
    return RandomTuner(seed=settings.seed)


class Search:
    """One search, run a trial at a time (`step`), so that several searches can take turns.

    Each search keeps its own tuner, assessor and trial records; the training of a trial is
    seeded by the search's seed, so the order in which searches take turns changes no
    result. `seconds` and `cpu_seconds` add up the search's own steps only.
    """

    def __init__(
        self,
        settings: SearchSettings,
        base: TrainConfig,
        search_space: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self.settings = settings
        self.tuner = make_tuner(settings)
        self.tuner.update_search_space(copy.deepcopy(dict(search_space)))
        self.assessor = (
            HeadraceMedianstop(
                optimize_mode="minimize",
                start_step=settings.assessor_start_step,
                min_completed=settings.assessor_min_completed,
            )
            if settings.assessor
            else None
        )
        self.base = base.model_copy(update={"seed": settings.seed})
        self.result = SearchResult(settings)

    @property
    def done(self) -> bool:
        return len(self.result.trials) >= self.settings.trials

    def step(self) -> None:
        """Run the next trial: ask the tuner, train, tell the tuner and the assessor."""
        started, cpu_started = time.perf_counter(), time.process_time()
        self.result.trials.append(self._trial(len(self.result.trials)))
        self.result.seconds += time.perf_counter() - started
        self.result.cpu_seconds += time.process_time() - cpu_started

    def _trial(self, parameter_id: int) -> TrialRecord:
        settings, tuner, assessor = self.settings, self.tuner, self.assessor
        trial_job_id = f"trial-{parameter_id}"
        params = tuner.generate_parameters(parameter_id)
        config = apply_params(self.base, params)
        intermediate = _Intermediate(trial_job_id, assessor)
        history = intermediate.history
        trial_started = time.perf_counter()
        try:
            outcome = run_trial(config, report=intermediate.report)
        except TrainingDiverged:
            record = TrialRecord(
                parameter_id,
                params,
                "failed",
                None,
                len(history),
                time.perf_counter() - trial_started,
            )
        else:
            finite = math.isfinite(outcome.best_val_loss)
            # a stop asked after the last epoch comes too late: the trial has run its budget
            stopped = outcome.stopped_early and outcome.epochs_run < config.epochs
            status: TrialStatus = (
                "early_stopped" if stopped else "succeeded" if finite else "failed"
            )
            record = TrialRecord(
                parameter_id,
                params,
                status,
                outcome.best_val_loss if finite else None,
                outcome.epochs_run,
                outcome.seconds,
            )
        success = record.status == "succeeded"
        if success:
            tuner.receive_trial_result(parameter_id, params, record.best_val_loss)
        elif record.status == "early_stopped" and settings.early_stopped == "last":
            tuner.receive_trial_result(parameter_id, params, history[-1])
        if assessor is not None and history:
            assessor.trial_end(trial_job_id, success)
        tuner.trial_end(parameter_id, success)
        return record


def run_searches(searches: list[Search]) -> list[SearchResult]:
    """Run `searches` taking turns, a trial each: trial k of every search runs at about the
    same time, so a change in the machine's speed over the run falls on all of them alike
    (as the serving benchmark's A B B A windows do)."""
    while not all(search.done for search in searches):
        for search in searches:
            if not search.done:
                search.step()
    return [search.result for search in searches]
