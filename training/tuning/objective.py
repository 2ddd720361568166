"""One tuning trial: train a config with the training recipe, report each epoch, archive the best.

`run_trial` is the objective every tuner minimises (NNI's trial process, the
tuning benchmark): it runs `training.recipe.TrainRecipe` without publishing,
calls `report(epoch, val_loss)` after every epoch and stops when `report`
returns True (an assessor's early stop). The score is the best validation loss
(cross-entropy on the validation split, the loss early stopping uses).

With `archive_dir`, the trial leaves there::

    weights.pt          best weights (state_dict of plain tensors)
    trial.json          TrialArchive: outcome, test metrics, the full TrainConfig
    fit.json            the training loop's FitResult (per-epoch history)
    run/                the recipe's run folder (checkpoint.pt, tensorboard/, report.json)

`load_trial_archive` reads it back; `publish_trial` publishes an archived trial
through the same export/verify/publish steps `headrace train` uses.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field, ValidationError

from headrace.errors import ConfigError
from training.config import TrainConfig
from training.evaluate import evaluate
from training.loop import EpochCallback, EpochRecord, FitResult
from training.published import WEIGHTS_FILE, save_weights
from training.recipe import TrainRecipe, TrainReport

TRIAL_FILE = "trial.json"
FIT_FILE = "fit.json"
RUN_FOLDER = "run"

ReportFn = Callable[[int, float], bool]
"""report(epoch, val_loss) -> True to stop the trial after this epoch."""


class TrialOutcome(BaseModel):
    """What one trial achieved."""

    best_val_loss: float = Field(description="Lowest validation cross-entropy over the epochs.")
    best_val_accuracy: float = Field(description="Validation accuracy at the best epoch.")
    epochs_run: int
    stopped_early: bool = Field(description="True when `report` asked the trial to stop.")
    seconds: float = Field(description="Wall time of the whole trial (data, training, test).")
    best_epoch: int = 0
    test_accuracy: float | None = None
    test_loss: float | None = None


class TrialArchive(BaseModel):
    """`trial.json` of an archived trial."""

    outcome: TrialOutcome
    config: TrainConfig
    params: dict[str, Any] = Field(default_factory=dict, description="Sampled hyper-parameters.")


class _StopAfterReport:
    """The recipe's `on_epoch` and `should_stop`, driven by a `report` function."""

    def __init__(self, report: ReportFn | None, on_epoch: EpochCallback | None = None) -> None:
        self.report = report
        self.forward = on_epoch
        self.stop = False

    def on_epoch(self, record: EpochRecord) -> None:
        if self.forward is not None:
            self.forward(record)
        if self.report is not None and self.report(record.epoch, record.val_loss):
            self.stop = True

    def should_stop(self) -> bool:
        return self.stop


def trial_config(config: TrainConfig, run_root: Path) -> TrainConfig:
    """`config` as a trial runs it: no publish, no progress bar, no resume, runs in `run_root`."""
    return config.model_copy(
        update={"publish": False, "progress": False, "resume": None, "runs_dir": run_root}
    )


def run_trial(
    config: TrainConfig,
    report: ReportFn | None = None,
    archive_dir: Path | None = None,
    params: dict[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrialOutcome:
    """Train `config` (nothing published), reporting each epoch; archive the best weights.

    `params` (the sampled hyper-parameters) are stored in the archive; `on_epoch` gets
    every epoch's full record (accuracy too) before `report` is asked."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="headrace-trial-") as tmp:
        run_dir = Path(tmp) if archive_dir is None else Path(archive_dir) / RUN_FOLDER
        control = _StopAfterReport(report, on_epoch)
        recipe = _TrialRecipe(trial_config(config, run_dir.parent), control)
        recipe.run_dir = run_dir
        try:
            recipe.setup()
            recipe.run()
            train_report = recipe.save()
            model, fit = recipe.result()
            outcome = _outcome(fit, train_report, control.stop, time.perf_counter() - started)
            if archive_dir is not None:
                _archive(Path(archive_dir), model, fit, outcome, config, params or {})
        finally:
            recipe.cleanup()
    return outcome


class _TrialRecipe(TrainRecipe):
    """The training recipe, stopped by a trial's `report`, that hands back its fitted model."""

    def __init__(self, config: TrainConfig, control: _StopAfterReport) -> None:
        super().__init__(config, control.on_epoch, control.should_stop)

    def result(self) -> tuple[torch.nn.Module, FitResult]:
        """The model (best weights restored) and the fit, after `run`."""
        trainer, _ = self._require()
        if self._fit is None:
            raise RuntimeError("run() must finish before result()")
        return trainer.model, self._fit


def _outcome(fit: FitResult, report: TrainReport, stopped: bool, seconds: float) -> TrialOutcome:
    best = next((r for r in fit.history if r.epoch == fit.best_epoch), None)
    return TrialOutcome(
        best_val_loss=fit.best_val_loss,
        best_val_accuracy=best.val_accuracy if best is not None else 0.0,
        epochs_run=fit.epochs_run,
        stopped_early=stopped,
        seconds=seconds,
        best_epoch=fit.best_epoch,
        test_accuracy=report.test_accuracy,
        test_loss=report.test_loss,
    )


def _archive(
    folder: Path,
    model: torch.nn.Module,
    fit: FitResult,
    outcome: TrialOutcome,
    config: TrainConfig,
    params: dict[str, Any],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / WEIGHTS_FILE)  # the loop restored the best weights
    (folder / FIT_FILE).write_text(fit.model_dump_json(indent=2))
    archive = TrialArchive(outcome=outcome, config=config, params=params)
    (folder / TRIAL_FILE).write_text(archive.model_dump_json(indent=2))


def load_trial_archive(folder: Path) -> TrialArchive:
    """`trial.json` of an archived trial (ConfigError when missing or unreadable)."""
    path = Path(folder) / TRIAL_FILE
    try:
        return TrialArchive.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError:
        raise ConfigError(f"no archived trial in {folder} ({TRIAL_FILE} missing)") from None
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a trial archive: {exc.error_count()} problems") from None


class _ArchivedTrialRecipe(TrainRecipe):
    """The training recipe with `run` replaced: load an archived trial's weights, no training."""

    def __init__(self, config: TrainConfig, folder: Path) -> None:
        super().__init__(config)
        self.folder = folder

    def run(self) -> None:
        trainer, splits = self._require()
        state = torch.load(self.folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        trainer.model.load_state_dict(state)
        self._fit = FitResult.model_validate_json((self.folder / FIT_FILE).read_text())
        self._test = evaluate(
            trainer.model, splits.test, trainer.pipeline.eval_batch, splits.num_classes
        )


def publish_trial(
    folder: Path,
    repository: Path,
    name: str | None = None,
    lineage: dict[str, str | int | float | bool | None] | None = None,
) -> TrainReport:
    """Publish an archived trial's best weights (export, verify, publish as `headrace train`)."""
    archive = load_trial_archive(folder)
    config = archive.config.model_copy(
        update={
            "publish": True,
            "progress": False,
            "resume": None,
            "repository": Path(repository),
            "name": name if name is not None else archive.config.name,
            "lineage": {**archive.config.lineage, **(lineage or {})},
        }
    )
    recipe = _ArchivedTrialRecipe(config, Path(folder))
    recipe.run_dir = Path(folder) / RUN_FOLDER
    try:
        recipe.setup()
        recipe.run()
        return recipe.save()
    finally:
        recipe.cleanup()
