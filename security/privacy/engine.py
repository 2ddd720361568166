"""DP-SGD with Opacus: the one wrapper around it.

`PrivateTraining` is the only place that talks to Opacus: it attaches
per-sample gradient hooks to a plain `nn.Module` (Opacus's non-wrapping mode,
so the module that is evaluated, checkpointed and exported stays the plain
one), wraps the optimizer in a `DPOptimizer` that clips each sample's gradient
to `max_grad_norm` and adds Gaussian noise, and draws each step's batch by
Poisson sampling (every training index joins a batch independently with
probability 1 / ceil(N / batch_size), Opacus's `DPDataLoader` rate, close to
batch_size / N; so batch sizes vary and may be empty). The noise
multiplier is the smallest that keeps the planned number of epochs within
(target_epsilon, target_delta) (`make_private_with_epsilon`'s search, memoised
per process); the accountant then reports what the steps
actually taken spent, so a run that stops early spends less.

Imports: only `headrace.errors` and `security.privacy.config` from this project.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from headrace.errors import CheckpointError, ConfigError
from security.privacy.config import PrivacyConfig, PrivacySpent

_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module"


@functools.lru_cache(maxsize=64)
def noise_multiplier(
    target_epsilon: float, target_delta: float, sample_rate: float, epochs: int, accountant: str
) -> float:
    """The smallest noise multiplier (Opacus's search) keeping `epochs` epochs of Poisson
    sampling at `sample_rate` within (target_epsilon, target_delta)."""
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # PRV at sample rate 1: log(0)
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=target_delta,
                sample_rate=sample_rate,
                epochs=epochs,
                accountant=accountant,
            )
        return float(sigma)
    except ValueError as exc:  # Opacus: "The privacy budget is too low."
        raise ConfigError(
            f"epsilon {target_epsilon:g} at delta {target_delta:g} cannot be met over {epochs} "
            f"epochs at sample rate {sample_rate:.3g} ({exc}): raise --dp-epsilon, or train "
            "fewer epochs or with smaller batches"
        ) from None


def opacus_problems(model: nn.Module) -> list[str]:
    """Why Opacus cannot compute per-sample gradients of `model` (empty when it can)."""
    problems: list[str] = []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        problems.append(
            "it has BatchNorm layers, whose batch statistics mix samples so no per-sample "
            "gradient bounds one sample's influence"
        )
    was_training = model.training
    model.train()
    try:
        errors = ModuleValidator.validate(model, strict=False)
    finally:
        model.train(was_training)
    for error in errors:
        text = str(error)
        if "BatchNorm" not in text:
            problems.append(text)
    return problems


class PrivateTraining:
    """DP-SGD for one model, optimizer and training set (see the module docstring).

    `batches()` yields one epoch of Poisson-sampled index batches (int64 tensors,
    possibly empty); every batch, empty or not, must be followed by exactly one
    `optimizer.step()`, which clips, adds noise and counts one step in the
    accountant. `close()` removes the hooks from the model.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        train_size: int,
        batch_size: int,
        epochs: int,
        config: PrivacyConfig,
        seed: int = 0,
    ) -> None:
        if train_size < 1:
            raise ConfigError("differentially private training needs a non-empty training set")
        problems = opacus_problems(model)
        if problems:
            raise ConfigError(
                "this model cannot be trained with differential privacy ("
                + "; ".join(problems)
                + "): use --model lenet5"
            )
        self.config = config
        self.train_size = train_size
        # Separate generators: index sampling and noise are reproducible from the seed and
        # their states are saved in checkpoints. (Opacus's secure_mode would use a CSPRNG.)
        self.sampling_generator = torch.Generator().manual_seed(seed + 1)
        self.noise_generator = torch.Generator().manual_seed(seed + 2)
        indices = TensorDataset(torch.arange(train_size, dtype=torch.int64))
        loader = DPDataLoader.from_data_loader(
            DataLoader(indices, batch_size=min(batch_size, train_size)),
            generator=self.sampling_generator,
        )
        # The hooks' backward pass warns on every step that the input needs no gradient
        # (true of every first layer): said once here instead of once per batch.
        warnings.filterwarnings("ignore", message=_HOOK_WARNING, category=UserWarning)
        with warnings.catch_warnings():
            # Opacus warns that its RNG is not cryptographic (documented in docs/privacy.md)
            # and that poisson_sampling=False would break its guarantee: the loader handed
            # over is already a Poisson-sampling DPDataLoader.
            warnings.simplefilter("ignore", UserWarning)
            self.engine = PrivacyEngine(accountant=config.accountant)
            # What make_private_with_epsilon does, with the noise search memoised: Opacus's
            # binary search costs seconds per run and resumed or repeated runs ask again.
            sigma = noise_multiplier(
                config.target_epsilon,
                config.target_delta,
                float(loader.sample_rate),
                epochs,
                config.accountant,
            )
            hooks, dp_optimizer, self.loader = self.engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=sigma,
                max_grad_norm=config.max_grad_norm,
                poisson_sampling=False,
                noise_generator=self.noise_generator,
                wrap_model=False,
            )
        hooks.forbid_grad_accumulation()  # as make_private does with Poisson sampling
        self._hooks = hooks
        self.optimizer: DPOptimizer = dp_optimizer
        self.sample_rate = float(loader.sample_rate)

    @property
    def noise_multiplier(self) -> float:
        return float(self.optimizer.noise_multiplier)

    @property
    def steps(self) -> int:
        return sum(int(steps) for _, _, steps in self.engine.accountant.history)

    def batches(self) -> Iterator[torch.Tensor]:
        """One epoch of Poisson-sampled training indices (about 1 / sample_rate batches)."""
        for (index,) in self.loader:
            yield index.to(torch.int64).reshape(-1)

    def spent(self) -> PrivacySpent:
        """The (epsilon, delta) spent by the steps taken so far (epsilon 0 before any step)."""
        delta = self.config.target_delta
        epsilon = 0.0
        if self.steps > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                epsilon = float(self.engine.accountant.get_epsilon(delta=delta))
        return PrivacySpent(
            epsilon=epsilon,
            delta=delta,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
            accountant=self.config.accountant,
        )

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history and the generators (plain values and tensors only)."""
        history = [
            [float(sigma), float(rate), int(steps)]
            for sigma, rate, steps in self.engine.accountant.history
        ]
        return {
            "accountant": self.config.accountant,
            "history": history,
            "noise_multiplier": self.noise_multiplier,
            "sampling_generator": self.sampling_generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`: the budget already spent stays spent."""
        if not state or "history" not in state:
            raise CheckpointError(
                "the checkpoint has no privacy accountant state (it was not trained with "
                "differential privacy): resume it without --dp-epsilon, or start a new run"
            )
        if state.get("accountant") != self.config.accountant:
            raise CheckpointError(
                f"the checkpoint was accounted with {state.get('accountant')!r}, this run uses "
                f"{self.config.accountant!r}: resume with the same accountant"
            )
        self.engine.accountant.history = [
            (float(sigma), float(rate), int(steps)) for sigma, rate, steps in state["history"]
        ]
        # The run goes on with the noise it started with (a resumed run that asks for more
        # epochs than planned spends more than the target; spent() says how much).
        self.optimizer.noise_multiplier = float(state["noise_multiplier"])
        self.sampling_generator.set_state(state["sampling_generator"])
        self.noise_generator.set_state(state["noise_generator"])

    def close(self) -> None:
        """Remove Opacus's hooks and per-sample gradients: the model is plain again."""
        self._hooks.cleanup()
