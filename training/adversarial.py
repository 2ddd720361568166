"""PGD (or FGSM) adversarial training as a `TrainingHook` (`TrainConfig.adversarial`).

Each training batch arrives augmented and normalised. The hook maps it back to
[0, 1] pixels with the trainer's own `pipeline.stats`, attacks it through
`PixelSpaceModel` (so the attack budget is in pixel units, as in the
literature), and hands the adversarial batch back normalised again. A share
`clean_fraction` of each batch may stay clean.

The attack runs with the model in eval mode, then the model's mode is restored:
the examples then target the function that will be served (batch norm with its
running statistics), and the k extra forward passes of an attack do not move
batch-norm running statistics towards intermediate, half-attacked inputs. For
models without batch norm or dropout (LeNet) both modes compute the same thing.

Early stopping, the plateau schedule and the choice of the best weights use
the validation loss under the training attack at the full epsilon
(`selection_loss`), not the clean one: robust accuracy keeps improving (and can
overfit, Rice et al. 2020) while clean loss says little about it, and with an
epsilon warm-up the clean loss is lowest in the weak early epochs. So the
`val_loss` a run reports is that loss under attack.

After training, `publish_info` measures robust accuracy on (part of) the test
split with a PGD at least as strong as the training one and records it in the
published metadata, with the attack settings in the lineage.
`published_pixel_model` loads a published version back for attacks.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from headrace.errors import ConfigError
from security.adversarial import AdversarialConfig, PixelSpaceModel, fgsm, pgd, robustness_report
from security.adversarial.config import LINEAGE_KEY, default_step_size
from serving.repository import ModelVersion
from training.hooks import PublishInfo, TrainingHook
from training.published import load_published_model

if TYPE_CHECKING:
    from training.loop import Trainer

PUBLISH_EVAL_STEPS = 20
"""PGD steps of the robust accuracy recorded at publish (at least the training steps)."""
PUBLISH_EVAL_SAMPLES = 500
"""Test samples attacked for the recorded robust accuracy (the first ones of the split)."""
_VAL_BATCH = 500
_SEED_OFFSET = 0x5EED  # the attack's random starts use their own stream, not the pipeline's


def published_pixel_model(version: ModelVersion) -> PixelSpaceModel:
    """A published version's torch model (sha256-checked, `weights_only`) seen from [0, 1]
    pixels through the normalisation its config.json records."""
    spec = version.config.preprocessing
    if spec is None:
        raise ConfigError(
            f"model {version.name!r} has no preprocessing in its config.json, so how pixels "
            "become its input is unknown; publish it with `headrace train`"
        )
    # input = (raw * scale - mean) / std with raw in [0, 255]; with pixels p = raw / 255 that
    # is (p - mean / (255 scale)) / (std / (255 scale)).
    unit = 255.0 * spec.scale
    return PixelSpaceModel(
        load_published_model(version), [m / unit for m in spec.mean], [s / unit for s in spec.std]
    )


class AdversarialHook(TrainingHook):
    """Replaces each training batch (all but `clean_fraction` of it) by attacked copies."""

    def __init__(self, config: AdversarialConfig) -> None:
        self.config = config
        self._trainer: Trainer | None = None
        self.generator = torch.Generator()
        self.examples = 0  # adversarial examples made so far (for tests and reports)
        self.history: list[tuple[float, float]] = []  # per epoch: (val loss, val acc) under attack

    def attach(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self.generator.manual_seed(trainer.config.seed + _SEED_OFFSET)

    def _pixel_model(self, model: nn.Module) -> PixelSpaceModel:
        if self._trainer is None:
            raise RuntimeError("AdversarialHook.attach(trainer) must run before training")
        stats = self._trainer.pipeline.stats
        return PixelSpaceModel(model, stats.mean, stats.std)

    def epsilon(self) -> float:
        """The radius of the current epoch (after the warm-up ramp)."""
        epoch = self._trainer.epoch if self._trainer is not None else 1
        return self.config.epsilon_at(epoch)

    def on_batch(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        wrapped = self._pixel_model(model)
        keep = round(self.config.clean_fraction * len(inputs))
        if keep >= len(inputs):
            return inputs, targets
        pixels = wrapped.to_pixels(inputs[keep:]).clamp(0.0, 1.0)
        was_training = model.training
        model.eval()
        try:
            adv = self._attack(wrapped, pixels, targets[keep:], self.epsilon(), self.generator)
        finally:
            model.train(was_training)
        self.examples += len(adv)
        return torch.cat([inputs[:keep], wrapped.to_model_input(adv).detach()]), targets

    def _attack(
        self,
        model: PixelSpaceModel,
        pixels: torch.Tensor,
        targets: torch.Tensor,
        epsilon: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The configured attack at radius `epsilon` (a warm-up radius scales the PGD step)."""
        cfg = self.config
        if cfg.method == "fgsm":
            return fgsm(
                model, pixels, targets, epsilon, random_start=cfg.random_start, generator=generator
            )
        step = cfg.pgd_step_size * epsilon / cfg.epsilon
        return pgd(
            model, pixels, targets, epsilon, step, cfg.steps,
            random_start=cfg.random_start, generator=generator,
        )  # fmt: skip

    def selection_loss(self, model: nn.Module) -> float | None:
        """Mean validation loss under the training attack at the full epsilon."""
        if self._trainer is None:
            return None
        cfg, val = self.config, self._trainer.splits.val
        if len(val) == 0:
            return None
        wrapped = self._pixel_model(model)
        generator = torch.Generator().manual_seed(self._trainer.config.seed + _SEED_OFFSET)
        was_training = model.training
        model.eval()
        total_loss, correct = 0.0, 0
        try:
            for start in range(0, len(val), _VAL_BATCH):
                pixels = torch.from_numpy(val.images[start : start + _VAL_BATCH]).float() / 255.0
                labels = torch.from_numpy(val.labels[start : start + _VAL_BATCH]).long()
                adv = self._attack(wrapped, pixels, labels, cfg.epsilon, generator)
                with torch.no_grad():
                    logits = wrapped(adv)
                total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(1) == labels).sum())
        finally:
            model.train(was_training)
        loss, accuracy = total_loss / len(val), correct / len(val)
        self.history.append((loss, accuracy))
        if self._trainer.config.progress:
            print(
                f"epoch {self._trainer.epoch}: val under {cfg.method} eps {cfg.epsilon:g} "
                f"(train eps {self.epsilon():g}): loss {loss:.4f} acc {accuracy:.4f}",
                file=sys.stderr,
            )
        return loss

    def publish_info(self, model: nn.Module) -> PublishInfo:
        cfg = self.config
        if self._trainer is None:
            return PublishInfo()
        test = self._trainer.splits.test
        steps = max(PUBLISH_EVAL_STEPS, cfg.steps)
        step = default_step_size(cfg.epsilon, steps)
        count = min(len(test), PUBLISH_EVAL_SAMPLES)
        report = robustness_report(
            self._pixel_model(model),
            test.images[:count],
            test.labels[:count],
            [cfg.epsilon],
            steps=steps,
            step_size=step,
            seed=self._trainer.config.seed,
        )
        row = report.rows[0]
        return PublishInfo(
            metrics={
                "test_robust_accuracy": row.pgd_accuracy,
                "test_fgsm_accuracy": row.fgsm_accuracy,
            },
            lineage={
                LINEAGE_KEY: cfg.model_dump_json(),
                "robust_accuracy_attack": (
                    f"pgd linf eps={cfg.epsilon:g} steps={steps} step={step:.4g} random start, "
                    f"pixels in [0,1], first {count} test samples"
                ),
            },
        )
