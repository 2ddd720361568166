"""Numerical gradient check: autograd against central differences, in float64.

`check_gradients` copies the model (`copy.deepcopy(model).double()`), so the
caller's model is never touched, and puts the copy in **eval mode**: batchnorm
then uses its running statistics and dropout is off, which makes the loss a
deterministic function of the parameters (train-mode batchnorm would also
update its running statistics on every forward pass). For a sample of
parameter entries it compares the autograd gradient with
`(L(theta + h) - L(theta - h)) / 2h`, perturbing each entry in place under
`torch.no_grad()` and restoring its exact value afterwards.

Per entry the relative error is `|g_num - g_auto| / max(|g_num| + |g_auto|, floor)`;
the floor keeps entries whose gradient is (near) zero from blowing up. The check
passes when the largest relative error is at most `tolerance`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from headrace.errors import ConfigError

__all__ = ["GradCheckReport", "TensorCheck", "check_gradients", "random_batch"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MIN_PER_TENSOR = 3
"""Every parameter tensor gets at least this many checked entries (or all, if smaller)."""


class TensorCheck(BaseModel):
    """The result for one parameter tensor."""

    model_config = ConfigDict(frozen=True)

    name: str
    shape: tuple[int, ...]
    checked: int
    max_rel_error: float
    max_abs_error: float


class GradCheckReport(BaseModel):
    """The outcome of one gradient check."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    dtype: str
    step: float
    tolerance: float
    checked: int
    max_rel_error: float
    max_abs_error: float
    worst_parameter: str
    worst_index: tuple[int, ...]
    passed: bool
    per_tensor: tuple[TensorCheck, ...]


def random_batch(
    input_shape: tuple[int, ...], num_classes: int, batch_size: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch of standard-normal inputs and uniform random class labels."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn((batch_size, *input_shape), generator=gen)
    targets = torch.randint(0, num_classes, (batch_size,), generator=gen)
    return inputs, targets


def _unravel(flat: int, shape: torch.Size) -> tuple[int, ...]:
    index: list[int] = []
    for size in reversed(shape):
        flat, rest = divmod(flat, size)
        index.append(rest)
    return tuple(reversed(index))


def _sample_counts(numels: list[int], max_params: int | None) -> list[int]:
    """How many entries to check per tensor: a minimum each, the rest by size."""
    if max_params is None:
        return list(numels)
    base = [min(n, MIN_PER_TENSOR) for n in numels]
    budget = max(max_params - sum(base), 0)
    spare = sum(numels) - sum(base)
    if spare == 0:
        return base
    return [b + min(n - b, budget * (n - b) // spare) for b, n in zip(base, numels, strict=True)]


def check_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    max_params: int | None = 200,
    step: float = 1e-6,
    tolerance: float = 1e-3,
    floor: float = 1e-8,
    seed: int = 0,
    name: str | None = None,
) -> GradCheckReport:
    """Compare autograd and central-difference gradients of `loss_fn(model(inputs), targets)`.

    `max_params` is the number of parameter entries to check, drawn at random
    (seeded by `seed`) over all trainable tensors, each tensor getting at least
    `MIN_PER_TENSOR` entries (so a model with many tensors may check a few more);
    `None` checks every entry. Floating-point `inputs` and `targets` are cast to
    float64; integer ones (labels, token ids) are left as they are.
    """
    if max_params is not None and max_params < 1:
        raise ConfigError(f"max_params must be at least 1 or None, got {max_params}")
    if step <= 0:
        raise ConfigError(f"step must be positive, got {step}")

    checked_model = copy.deepcopy(model).double().eval()
    x = inputs.double() if inputs.is_floating_point() else inputs
    y = targets.double() if targets.is_floating_point() else targets
    params = [(n, p) for n, p in checked_model.named_parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters to check")

    def loss() -> torch.Tensor:
        value = loss_fn(checked_model(x), y)
        if value.numel() != 1:
            raise ConfigError(f"the loss must be a scalar, got shape {tuple(value.shape)}")
        return value.reshape(())

    with torch.enable_grad():
        grads = torch.autograd.grad(loss(), [p for _, p in params], allow_unused=True)

    gen = torch.Generator().manual_seed(seed)
    counts = _sample_counts([p.numel() for _, p in params], max_params)
    per_tensor: list[TensorCheck] = []
    worst = (-1.0, "", ())  # (rel error, name, index)
    max_abs = 0.0
    with torch.no_grad():
        for (pname, p), grad, count in zip(params, grads, counts, strict=True):
            auto = torch.zeros_like(p) if grad is None else grad
            t_rel = t_abs = 0.0
            for flat in torch.randperm(p.numel(), generator=gen)[:count].tolist():
                idx = _unravel(flat, p.shape)
                original = p[idx].clone()
                p[idx] = original + step
                plus = loss().item()
                p[idx] = original - step
                minus = loss().item()
                p[idx] = original
                g_num = (plus - minus) / (2 * step)
                g_auto = auto[idx].item()
                abs_err = abs(g_num - g_auto)
                rel_err = abs_err / max(abs(g_num) + abs(g_auto), floor)
                if not math.isfinite(rel_err):  # NaN/inf gradients or losses fail the check
                    rel_err = abs_err = math.inf
                t_rel, t_abs = max(t_rel, rel_err), max(t_abs, abs_err)
                if rel_err > worst[0]:
                    worst = (rel_err, pname, idx)
            max_abs = max(max_abs, t_abs)
            per_tensor.append(TensorCheck(name=pname, shape=tuple(p.shape), checked=count,
                                          max_rel_error=t_rel, max_abs_error=t_abs))

    max_rel, worst_name, worst_index = worst
    return GradCheckReport(
        model_name=name or type(model).__name__,
        dtype="float64",
        step=step,
        tolerance=tolerance,
        checked=sum(counts),
        max_rel_error=max_rel,
        max_abs_error=max_abs,
        worst_parameter=worst_name,
        worst_index=worst_index,
        passed=max_rel <= tolerance,
        per_tensor=tuple(per_tensor),
    )
