"""The process NNI starts for each trial: `python -m training.tuning.nni_trial TUNE_JSON`.

It asks NNI for the trial's hyper-parameters, applies them to the tuning job's
base `TrainConfig`, trains through `objective.run_trial` and reports to NNI:
every epoch an intermediate result (`default` = validation loss, or validation
accuracy when the Curvefitting assessor needs a rising curve), at the end the
final result (`default` = best validation loss, the value every tuner
minimises). Under BOHB the parameters also carry `TRIAL_BUDGET`, the
trial's epochs, which replaces the base config's `epochs`. The trial's archive goes to
`<experiment_dir>/<experiment_id>/trials/<trial_id>/` (NNI's own trial folder).
An assessor's early stop kills the process; such a trial leaves no `trial.json`
and is never published.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nni

from headrace.errors import ConfigError, HeadraceError
from training.loop import EpochRecord
from training.tuning.config import TuneConfig
from training.tuning.objective import run_trial
from training.tuning.search_space import apply_params
from training.tuning.tuners import decode_params, intermediate_metric

BUDGET_KEY = "TRIAL_BUDGET"
"""Set by the BOHB advisor among the parameters: the epochs this trial may use."""


def trial_folder(experiment_folder: Path, trial_id: str) -> Path:
    """Where a trial's archive lives."""
    return experiment_folder / "trials" / trial_id


def budget_epochs(budget: Any, max_epochs: int) -> int:
    """BOHB's budget as whole epochs: rounded, at least 1, at most the job's epochs."""
    try:
        epochs = round(float(budget))
    except (TypeError, ValueError):
        raise ConfigError(
            f"BOHB sent the trial budget {budget!r}, not a number of epochs"
        ) from None
    return min(max(1, epochs), max_epochs)


def _metrics(record: EpochRecord, default: str) -> dict[str, float]:
    values = {"val_loss": record.val_loss, "val_accuracy": record.val_accuracy}
    return {"default": values[default], **values, "train_loss": record.train_loss}


def run(tune_file: Path) -> None:
    """One trial, start to end, under NNI."""
    tune = TuneConfig.model_validate_json(tune_file.read_text(encoding="utf-8"))
    raw: dict[str, Any] = dict(nni.get_next_parameter() or {})
    params = decode_params(raw, tune.search_space)
    budget = params.pop(BUDGET_KEY, None)
    config = apply_params(tune.train, params)
    if budget is not None:
        config = config.model_copy(update={"epochs": budget_epochs(budget, tune.train.epochs)})
    default = intermediate_metric(tune)
    outcome = run_trial(
        config,
        archive_dir=trial_folder(tune_file.parent, nni.get_trial_id()),
        params=params,
        on_epoch=lambda record: nni.report_intermediate_result(_metrics(record, default)),
    )
    final = {
        "default": outcome.best_val_loss,
        "val_accuracy": outcome.best_val_accuracy,
        "epochs_run": float(outcome.epochs_run),
    }
    if outcome.test_accuracy is not None:
        final["test_accuracy"] = outcome.test_accuracy
    nni.report_final_result(final)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m training.tuning.nni_trial TUNE_JSON", file=sys.stderr)
        return 2
    try:
        run(Path(args[0]))
    except HeadraceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
