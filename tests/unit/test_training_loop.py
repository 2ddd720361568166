"""The training loop on small data: checkpoints, resume, early stopping, divergence, reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from headrace.errors import CheckpointError, TrainingDiverged
from serving.repository import ModelRepository
from training.checkpoint import checkpoint_path, load_checkpoint
from training.config import TrainConfig
from training.datasets import DatasetSplits, load_splits
from training.loop import Trainer
from training.models import build_model
from training.preprocess import BatchPipeline
from training.recipe import run_training


def _config(tmp_path: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "epochs": 2,
        "repository": tmp_path / "repo",
        "runs_dir": tmp_path / "runs",
        "run_id": "r1",
        "progress": False,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def _small_splits() -> DatasetSplits:
    splits = load_splits("digits", seed=0)
    keep = np.arange(300)
    return DatasetSplits(
        splits.name, splits.classes, splits.train.subset(keep), splits.val, splits.test
    )


def _trainer(config: TrainConfig, run_dir: Path) -> Trainer:
    splits = _small_splits()
    pipeline = BatchPipeline(
        config.preprocess, "digits", splits.train.images, splits.train.labels, 10, config.seed
    )
    return Trainer(build_model("lenet5"), splits, pipeline, config, run_dir)


def test_checkpoint_every_epoch_and_resume_continues(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = _trainer(_config(tmp_path, epochs=2), run_dir).fit()
    assert first.epochs_run == 2 and len(first.history) == 2
    assert load_checkpoint(run_dir)["epoch"] == 2
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    resumed = _trainer(_config(tmp_path, epochs=4, resume=run_dir), run_dir).fit()
    assert resumed.epochs_run == 4
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history


def test_early_stopping_after_patience_epochs(tmp_path: Path) -> None:
    trainer = _trainer(_config(tmp_path, epochs=10, patience=2), tmp_path / "run")
    trainer.best_val_loss = -1.0  # a loss no epoch can beat
    result = trainer.fit()
    assert result.stopped_early and result.epochs_run == 2


def test_resume_refuses_another_architecture(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _trainer(_config(tmp_path, epochs=1), run_dir).fit()
    with pytest.raises(CheckpointError, match="lenet5"):
        run_training(_config(tmp_path, model="resnet20", resume=run_dir))


def test_resume_refuses_other_settings_instead_of_ignoring_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _trainer(_config(tmp_path, epochs=1, learning_rate=0.01), run_dir).fit()
    with pytest.raises(CheckpointError) as info:  # the default lr 0.001, another seed
        _trainer(_config(tmp_path, epochs=2, seed=3, resume=run_dir), run_dir).fit()
    assert "seed 0 (now 3)" in info.value.message
    assert "learning_rate 0.01 (now 0.001)" in info.value.message
    resumed = _trainer(_config(tmp_path, epochs=2, learning_rate=0.01, resume=run_dir), run_dir)
    assert resumed.fit().epochs_run == 2  # the same settings (and more epochs) resume


def test_resume_of_a_checkpoint_without_settings_still_checks_the_dataset(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    trainer = _trainer(_config(tmp_path, epochs=1), run_dir)
    trainer.fit()
    state = load_checkpoint(run_dir)
    del state["settings"]  # as written before settings were recorded
    torch.save(state, checkpoint_path(run_dir))
    with pytest.raises(CheckpointError, match="dataset 'digits' \\(now 'mnist'\\)"):
        config = _config(tmp_path, dataset="mnist", data_dir=tmp_path, resume=run_dir)
        _trainer(config, run_dir).restore(run_dir)


def test_resume_of_a_distributed_checkpoint_says_how_it_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _trainer(_config(tmp_path, epochs=1), run_dir).fit()
    state = load_checkpoint(run_dir)
    del state["optimizer"], state["settings"]  # as a parameter-server job writes it
    state["bytes_per_epoch"] = [1024]
    torch.save(state, checkpoint_path(run_dir))
    with pytest.raises(CheckpointError, match="written by a distributed training job"):
        _trainer(_config(tmp_path, epochs=2, resume=run_dir), run_dir).fit()


@pytest.mark.parametrize("content", [b"hi\n", b"garbage", b"PK\x03\x04truncated"])
def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path: Path, content: bytes) -> None:
    # the message was torch's: '105' for a text file, or a page advising weights_only=False
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "bad.pt")
    message = info.value.message
    assert message.startswith(f"{tmp_path / 'bad.pt'} is not a torch checkpoint")
    assert "\n" not in message and "weights_only" not in message


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    bad = checkpoint_path(tmp_path / "bad")
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a torch checkpoint"):
        load_checkpoint(bad)


def test_divergence_is_reported(tmp_path: Path) -> None:
    trainer = _trainer(_config(tmp_path, epochs=3), tmp_path / "run")
    with torch.no_grad():
        trainer.model.classifier[-1].bias[0] = float("nan")  # type: ignore[index]
    with pytest.raises(TrainingDiverged, match="--lr"):
        trainer.fit()


def test_recipe_publishes_a_verified_version(tmp_path: Path) -> None:
    report = run_training(_config(tmp_path, epochs=2))
    assert report.version == 1
    assert report.onnx_max_abs_diff is not None and report.onnx_max_abs_diff < 1e-4
    version = ModelRepository(tmp_path / "repo").latest("lenet5-digits")
    assert version.metadata.architecture == "lenet5"
    assert version.metadata.metrics["test_accuracy"] == pytest.approx(report.test_accuracy)
    assert version.config.preprocessing is not None
    assert version.config.labels == [str(d) for d in range(10)]
    written = json.loads((Path(report.run_dir) / "report.json").read_text())
    assert written == json.loads(report.model_dump_json())
    assert written["epochs_run"] == 2


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ValueError) as info:
        TrainConfig(model="nope", dataset="nada", epochs=0, name="../x")
    text = str(info.value)
    assert "epochs" in text and "unknown model" in text and "unknown dataset" in text
    assert "invalid model name" in text
    with pytest.raises(ValueError, match="--data-dir"):
        TrainConfig(dataset="mnist")
