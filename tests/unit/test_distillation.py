"""Knowledge distillation as a training hook: the loss term, a frozen teacher, real transfer."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from headrace.errors import CompressionError, ConfigError
from training.compression.distillation import DistillationHook, distillation_loss
from training.config import TrainConfig
from training.datasets import DatasetSplits, load_splits
from training.evaluate import evaluate
from training.hooks import TrainingHook
from training.loop import Trainer
from training.models import build_model
from training.preprocess import BatchPipeline


def _config(tmp_path: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "epochs": 2,
        "learning_rate": 3e-3,
        "repository": tmp_path / "repo",
        "runs_dir": tmp_path / "runs",
        "run_id": "r1",
        "progress": False,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def _trainer(
    model: torch.nn.Module,
    splits: DatasetSplits,
    config: TrainConfig,
    run_dir: Path,
    hooks: list[TrainingHook] | None = None,
) -> Trainer:
    pipeline = BatchPipeline(
        config.preprocess, "digits", splits.train.images, splits.train.labels, 10, config.seed
    )
    return Trainer(model, splits, pipeline, config, run_dir, hooks=hooks)


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_splits("digits", seed=0)


@pytest.fixture(scope="module")
def teacher(digits: DatasetSplits, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """A LeNet-5 trained on digits for 3 epochs (0.93 test accuracy when measured)."""
    tmp_path = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = build_model("lenet5")
    _trainer(model, digits, _config(tmp_path, epochs=3), tmp_path / "run").fit()
    return model.eval()


def test_loss_term_is_alpha_t_squared_kl_and_only_the_student_gets_gradients() -> None:
    torch.manual_seed(0)
    teacher, student = build_model("lenet5"), build_model("lenet5")
    hook = DistillationHook(teacher, temperature=3.0, alpha=0.5)
    inputs, targets = 5 * torch.randn(8, 1, 28, 28), torch.arange(8)
    logits = student(inputs)
    loss = hook.logits_loss(student, inputs, targets, logits)
    assert loss is not None and hook.last_loss is not None and hook.last_loss > 0
    with torch.no_grad():  # KL(p_teacher || p_student), written out in float64
        p_teacher = F.softmax(teacher(inputs).double() / 3.0, dim=1)
        log_p_student = F.log_softmax(logits.double() / 3.0, dim=1)
        kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(dim=1).mean()
    assert hook.last_loss == pytest.approx(0.5 * 9.0 * float(kl), rel=1e-4)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    same = distillation_loss(logits.detach(), logits.detach(), 3.0, 0.5)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_empty_batch_adds_nothing() -> None:
    hook = DistillationHook(build_model("lenet5"))
    empty = torch.zeros(0, 1, 28, 28)
    assert (
        hook.logits_loss(build_model("lenet5"), empty, torch.zeros(0), torch.zeros(0, 10)) is None
    )


def test_teacher_alone_carries_the_labels_and_stays_frozen(
    digits: DatasetSplits, teacher: torch.nn.Module, tmp_path: Path
) -> None:
    """With the training labels shuffled, only the teacher knows the classes: a distilled
    student learns them, a plain one stays at chance; the teacher is never updated."""
    teacher_state = copy.deepcopy(teacher.state_dict())
    labels = np.random.default_rng(0).permutation(digits.train.labels)
    shuffled = DatasetSplits(
        digits.name,
        digits.classes,
        dataclasses.replace(digits.train, labels=labels),
        digits.val,
        digits.test,
    )
    accuracies: dict[str, float] = {}
    runs: list[tuple[str, list[TrainingHook]]] = [
        ("plain", []),
        ("distilled", [DistillationHook(teacher, 4.0, 1.0)]),
    ]
    for name, hooks in runs:
        torch.manual_seed(1)
        student = build_model("lenet5")
        trainer = _trainer(
            student, shuffled, _config(tmp_path, run_id=name), tmp_path / name, hooks
        )
        trainer.fit()
        accuracies[name] = evaluate(student, digits.test, trainer.pipeline.eval_batch, 10).accuracy
    teacher_accuracy = evaluate(teacher, digits.test, trainer.pipeline.eval_batch, 10).accuracy
    assert teacher_accuracy >= 0.85  # students: 2 epochs each
    assert accuracies["plain"] < 0.3
    assert accuracies["distilled"] >= 0.8
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_state[key])
    info = trainer.hooks[0].publish_info(student)
    assert info.lineage == {"distillation_temperature": 4.0, "distillation_alpha": 1.0}


def test_teacher_with_other_classes_or_inputs_is_refused_before_training(
    digits: DatasetSplits, tmp_path: Path
) -> None:
    student = build_model("lenet5")
    config = _config(tmp_path)
    with pytest.raises(CompressionError, match=r"shape \(2, 5\).*same classes"):
        _trainer(
            student, digits, config, tmp_path / "a", [DistillationHook(build_model("lenet5", 5))]
        )
    colour = build_model("lenet5", in_channels=3)
    with pytest.raises(CompressionError, match=r"does not accept the student's input of shape"):
        _trainer(student, digits, config, tmp_path / "b", [DistillationHook(colour)])
    with pytest.raises(CompressionError, match="another model than the student"):
        _trainer(student, digits, config, tmp_path / "c", [DistillationHook(student)])


@pytest.mark.parametrize(("temperature", "alpha"), [(0.0, 0.7), (-1.0, 0.7), (4.0, -0.1)])
def test_bad_temperature_or_alpha_is_refused(temperature: float, alpha: float) -> None:
    with pytest.raises(ConfigError, match="distillation"):
        DistillationHook(build_model("lenet5"), temperature, alpha)
