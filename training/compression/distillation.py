"""Knowledge distillation from a teacher model, as a training hook.

`DistillationHook(teacher)` adds, on every training batch,

    alpha * T^2 * KL( softmax(teacher(x) / T) || softmax(student(x) / T) )

to the loop's cross-entropy (which keeps weight 1): the student learns the
teacher's softened class probabilities as well as the labels (Hinton et al.,
"Distilling the Knowledge in a Neural Network", 2015; T^2 keeps the soft term's
gradients on the scale of the hard one's as T changes). The teacher runs in eval
mode without gradients and is never updated. It sees exactly the student's
batch, after the other hooks changed it (adversarial examples, watermark
triggers).

This is our own hook, not NNI's `nni.compression.distillation`: NNI 3.0's
distillers (`DynamicLayerwiseDistiller`, `Adaptive1dLayerwiseDistiller`) wrap
student and teacher modules and patch the loss inside an NNI `Evaluator` that
runs its own training function, whereas `training.loop.Trainer` owns the loop,
checkpoints and hooks. The loss term needs the student's logits, which the
hooks' `extra_loss(model)` does not see, so `TrainingHook.logits_loss(model,
inputs, targets, logits)` was added for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from headrace.errors import CompressionError, ConfigError
from training.hooks import PublishInfo, TrainingHook

if TYPE_CHECKING:
    from training.loop import Trainer


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    student_log_p = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="batchmean")
    return alpha * temperature * temperature * kl


class DistillationHook(TrainingHook):
    """Adds the distillation term from a frozen `teacher` to the student's batch loss."""

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.7) -> None:
        if not temperature > 0:
            raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
        if not alpha >= 0:
            raise ConfigError(f"distillation alpha must be >= 0, got {alpha}")
        self.teacher = teacher.eval()
        self.teacher.requires_grad_(False)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.last_loss: float | None = None  # the term of the last batch, for progress reports

    def attach(self, trainer: Trainer) -> None:
        """Fail before training if teacher and student do not fit together."""
        if trainer.model is self.teacher:
            raise CompressionError(
                "the distillation teacher must be another model than the student"
            )
        images = trainer.splits.train.images[:2]
        if len(images):
            self.check_compatible(
                trainer.model, trainer.pipeline.eval_batch(torch.from_numpy(images))
            )

    def check_compatible(self, student: nn.Module, inputs: torch.Tensor) -> None:
        """Raise CompressionError unless the teacher takes `inputs` and predicts the
        student's classes."""
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                student_logits = student(inputs)
                teacher_logits = self._teacher_logits(inputs)
        finally:
            student.train(was_training)
        self._check_logits(student_logits, teacher_logits)

    def _teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()  # stays frozen even if someone switched it back to train mode
        try:
            with torch.no_grad():
                return self.teacher(inputs)
        except RuntimeError as exc:
            raise CompressionError(
                f"the distillation teacher does not accept the student's input of shape "
                f"{tuple(inputs.shape)} ({exc}); use a teacher trained on the same dataset "
                "and preprocessing"
            ) from exc

    @staticmethod
    def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        if teacher_logits.shape != student_logits.shape:
            raise CompressionError(
                f"the teacher's outputs have shape {tuple(teacher_logits.shape)} but the "
                f"student's have {tuple(student_logits.shape)}; teacher and student must "
                "predict the same classes"
            )

    def logits_loss(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor | None:
        if len(inputs) == 0:  # an empty (Poisson-sampled) batch has nothing to distil
            return None
        teacher_logits = self._teacher_logits(inputs)
        self._check_logits(logits, teacher_logits)
        loss = distillation_loss(logits, teacher_logits, self.temperature, self.alpha)
        self.last_loss = float(loss.detach())
        return loss

    def publish_info(self, model: nn.Module) -> PublishInfo:
        return PublishInfo(
            lineage={
                "distillation_temperature": self.temperature,
                "distillation_alpha": self.alpha,
            }
        )
