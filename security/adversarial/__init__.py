"""Adversarial examples and defences: L-inf FGSM / PGD attacks and robustness reports.

Leaf modules (torch, numpy and pydantic only): `config` (`AdversarialConfig`,
what `TrainConfig.adversarial` holds), `attacks` (`fgsm`, `pgd`), `pixel_model`
(`PixelSpaceModel`: a trained network seen from [0, 1] pixels through its
normalisation) and `robustness` (clean, FGSM and PGD accuracy over several
radii). PGD adversarial training is `training.adversarial.AdversarialHook`,
which uses these; `headrace security robustness` reports on published models.
"""

from security.adversarial.attacks import PixelModel, fgsm, pgd
from security.adversarial.config import AdversarialConfig, default_step_size
from security.adversarial.pixel_model import PixelSpaceModel
from security.adversarial.robustness import (
    RobustnessReport,
    RobustnessRow,
    correct_under_attack,
    robustness_report,
)

__all__ = [
    "AdversarialConfig",
    "PixelModel",
    "PixelSpaceModel",
    "RobustnessReport",
    "RobustnessRow",
    "correct_under_attack",
    "default_step_size",
    "fgsm",
    "pgd",
    "robustness_report",
]
