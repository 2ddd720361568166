"""Differential privacy in the training loop: the hook, the config checks and the DP defaults.

`PrivacyHook` makes a `Trainer` private through `security.privacy.PrivateTraining`:
the trainer keeps its plain model (Opacus's per-sample gradient hooks sit on it
while `fit` runs and are removed when it ends), its optimizer becomes Opacus's
`DPOptimizer`, each epoch's index batches come from Opacus's Poisson-sampling
`DPDataLoader`, and the accountant's state rides in every checkpoint so a
resumed run keeps counting. What the steps actually taken spent is published
as the version's `dp_epsilon` / `dp_delta`.

`privacy_problems(config)` lists what a private run refuses (TrainConfig reports
them with every other problem); `with_dp_defaults(values)` fills in the DP-SGD
hyper-parameters a user gets when the privacy section is all they set.
`delta_problem` is the one rule for delta against the training-set size: checked
with the config when the size is known before loading (the embedded dataset), and
by the hook on the loaded split otherwise (files, shards).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from headrace.errors import ConfigError
from security.privacy.config import PrivacyConfig, check_distributed_privacy
from training.datasets import train_split_size
from training.hooks import PublishInfo, TrainingHook
from training.models import MODELS, build_model

if TYPE_CHECKING:
    from collections.abc import Iterable

    from security.privacy.engine import PrivateTraining
    from training.config import TrainConfig
    from training.loop import Trainer

# DP-SGD settings a private run gets for every field it does not set (measured on the
# 8,100-image MNIST split with LeNet-5: docs/privacy.md and benchmarks/privacy.py).
DP_DEFAULTS: dict[str, Any] = {
    "batch_size": 512,  # the expected Poisson batch (256 and 1024 did worse)
    "optimizer": "sgd",
    "learning_rate": 0.5,
    "momentum": 0.9,
    "epochs": 10,  # the noise is calibrated to this many epochs (15 and 20 did worse)
    "lr_schedule": "none",
}
DP_PREPROCESS_DEFAULTS: dict[str, Any] = {
    "normalize": False,  # training-set statistics would be published outside the budget
    "augment": {"enabled": False},  # no measurable gain under DP
}


def with_dp_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig input with the DP defaults added where `values` has no entry.

    Leaves `values` as it is when it has no privacy section.
    """
    if values.get("privacy") is None:
        return values
    out = {**DP_DEFAULTS, **values}
    preprocess = out.get("preprocess")
    if preprocess is None:
        out["preprocess"] = {**DP_PREPROCESS_DEFAULTS}
    elif isinstance(preprocess, dict):
        augment = preprocess.get("augment")
        merged_augment = (
            {**DP_PREPROCESS_DEFAULTS["augment"], **augment}
            if isinstance(augment, dict)
            else augment
            if augment is not None
            else DP_PREPROCESS_DEFAULTS["augment"]
        )
        out["preprocess"] = {
            **DP_PREPROCESS_DEFAULTS,
            **preprocess,
            "augment": merged_augment,
        }
    return out


def delta_problem(delta: float, train_size: int) -> str | None:
    """Why `delta` is too large for `train_size` training samples (None if it is not)."""
    if delta < 1 / train_size:
        return None
    return (
        f"dp delta {delta:g} is not below 1 / {train_size} training samples, so the guarantee "
        "would allow leaking a sample outright: lower --dp-delta (privacy.target_delta in a "
        f"job spec) below {1 / train_size:.3g}"
    )


def privacy_problems(config: TrainConfig) -> list[str]:
    """Why `config`'s privacy section cannot be honoured (empty when it can, or when unset)."""
    if config.privacy is None:
        return []
    from security.privacy.engine import opacus_problems  # Opacus: import it only when used

    problems: list[str] = []
    train_size = train_split_size(
        config.dataset, config.val_fraction, config.test_fraction, config.data_source
    )
    # None for a dataset read from files or shards: PrivacyHook checks the loaded split
    delta = None if train_size is None else delta_problem(config.privacy.target_delta, train_size)
    if delta is not None:
        problems.append(delta)
    if config.model in MODELS:
        for reason in opacus_problems(build_model(config.model)):
            problems.append(
                f"model {config.model!r} cannot be trained with differential privacy ({reason}): "
                "use --model lenet5"
            )
    balance = config.preprocess.balance
    if balance == "sampler":
        problems.append(
            "balance 'sampler' draws class-balanced batches, which conflicts with the Poisson "
            "sampling the privacy accounting assumes: use --balance none"
        )
    elif balance == "loss":
        problems.append(
            "balance 'loss' weighs each sample by its class's share of the batch, so one "
            "sample changes the others' gradients and clipping no longer bounds it: use "
            "--balance none"
        )
    if config.preprocess.normalize:
        problems.append(
            "normalisation statistics are computed from the training images and published "
            "with the model outside the privacy budget: train with --no-normalize (the default "
            "with --dp-epsilon)"
        )
    for feature in ("adversarial", "watermark"):
        if getattr(config, feature, None) is not None:
            problems.append(
                f"differential privacy cannot be combined with {feature} training (its extra "
                "inputs and loss terms are not accounted in the privacy budget): train one "
                "model with each"
            )
    distributed = getattr(config, "distributed", None)
    if distributed is not None:
        try:
            check_distributed_privacy(distributed.workers, distributed.strategy)
        except ConfigError as exc:
            problems.append(exc.message)
    return problems


class PrivacyHook(TrainingHook):
    """DP-SGD for one `Trainer` (see the module docstring); publishes the budget spent."""

    def __init__(self, config: PrivacyConfig) -> None:
        self.config = config
        self._private: PrivateTraining | None = None

    @property
    def private(self) -> PrivateTraining:
        if self._private is None:
            raise RuntimeError("PrivacyHook is not attached to a trainer")
        return self._private

    def attach(self, trainer: Trainer) -> None:
        others = [type(hook).__name__ for hook in trainer.hooks if hook is not self]
        if others:
            raise ConfigError(
                "differential privacy cannot be combined with other training hooks "
                f"({', '.join(others)}): their batches and losses are not accounted"
            )
        if trainer.loss_weights is not None:
            raise ConfigError("differential privacy needs an unweighted loss: use --balance none")
        train_size = len(trainer.splits.train)
        if (problem := delta_problem(self.config.target_delta, train_size)) is not None:
            raise ConfigError(problem)  # a dataset read from files or shards: known only now
        from security.privacy.engine import PrivateTraining  # Opacus: import it only when used

        self._private = PrivateTraining(
            trainer.model,
            trainer.optimizer,
            train_size=train_size,
            batch_size=trainer.config.batch_size,
            epochs=trainer.config.epochs,
            config=self.config,
            seed=trainer.config.seed,
        )
        trainer.optimizer = self._private.optimizer

    def detach(self, trainer: Trainer) -> None:
        self.private.close()

    def epoch_batches(self) -> Iterable[torch.Tensor]:
        return self.private.batches()

    def state_dict(self) -> dict[str, Any]:
        return self.private.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.private.load_state_dict(state)

    def publish_info(self, model: nn.Module) -> PublishInfo:
        spent = self.private.spent()
        return PublishInfo(
            dp_epsilon=spent.epsilon,
            dp_delta=spent.delta,
            metrics={
                "dp_noise_multiplier": spent.noise_multiplier,
                "dp_sample_rate": spent.sample_rate,
                "dp_steps": float(spent.steps),
            },
            lineage={
                "dp_target_epsilon": self.config.target_epsilon,
                "dp_max_grad_norm": self.config.max_grad_norm,
                "dp_accountant": spent.accountant,
                "dp_sampling": "poisson",
                "dp_library": "opacus",
            },
        )
