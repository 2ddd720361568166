"""Numerical gradient check: autograd against finite differences, in float64.

`check_gradients` copies the model (`copy.deepcopy(model).double()`), so the
caller's model is never touched, and puts the copy in **eval mode**: batchnorm
then uses its running statistics and dropout is off, which makes the loss a
deterministic function of the parameters (train-mode batchnorm would also
update its running statistics on every forward pass). For a seeded sample of
parameter entries it compares the autograd gradient with the central
difference `(L(theta + h) - L(theta - h)) / 2h`, perturbing each entry in place
under `torch.no_grad()` and restoring its exact value afterwards.

Per entry the relative error is `|g_num - g_auto| / max(|g_num| + |g_auto|, floor)`;
the floor keeps entries whose gradient is (near) zero from blowing up. A finite
difference carries rounding noise of about `eps64 * |L| / h` (~5e-10 for a
cross-entropy of 2.3 at h = 1e-6), so the floor used is at least `NOISE_FACTOR`
times that: gradients smaller than this are judged on their absolute error.
The check passes when the largest relative error is at most `tolerance`.

A step that straddles a kink (a ReLU input or a max-pool tie within h of
switching) gives a wrong central difference even for a correct backward; deep
ReLU networks such as resnet20 hit one every few dozen entries at h = 1e-6.
So each entry is also compared with the one-sided differences
`(L(theta + h) - L(theta)) / h` and `(L(theta) - L(theta - h)) / h` (no extra
forward pass; one of them misses a kink on the other side) and, if still out of
tolerance, measured again at h/10; its smallest error is kept. A wrong backward
disagrees with every estimate at every step, so it is still caught.
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

NOISE_FACTOR = 1e4
"""The relative-error floor is at least this many times the finite-difference rounding noise."""

RETRY_FACTORS = (1.0, 0.1)
"""Steps tried per entry, as fractions of `step`, until one is within tolerance."""

EPS64 = torch.finfo(torch.float64).eps


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
    floor: float
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
    spare = sum(numels) - sum(base)
    # capped at what is left: a larger budget handed tensors more entries than they hold,
    # and the correction below then made the counts negative
    budget = min(max(max_params - sum(base), 0), spare)
    if spare == 0:
        return base
    counts = [b + budget * (n - b) // spare for b, n in zip(base, numels, strict=True)]
    left = min(budget, spare) - (sum(counts) - sum(base))  # what rounding down left over
    for i in sorted(range(len(numels)), key=lambda i: -numels[i]):
        extra = min(left, numels[i] - counts[i])
        counts[i] += extra
        left -= extra
    return counts


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
    """Compare autograd and finite-difference gradients of `loss_fn(model(inputs), targets)`.

    `max_params` is the number of parameter entries to check, drawn at random
    (seeded by `seed`) over all trainable tensors, each tensor getting at least
    `MIN_PER_TENSOR` entries (so a model with many tensors may check a few more);
    `None` checks every entry. `floor` is the smallest denominator of the
    relative error; it is raised to `NOISE_FACTOR` times the rounding noise (see
    the module docstring). Floating-point `inputs` and `targets` are cast to
    float64; integer ones (labels, token ids) are left as they are.
    """
    if max_params is not None and max_params < 1:
        raise ConfigError(f"max_params must be at least 1 or None, got {max_params}")
    if not math.isfinite(step) or step <= 0:  # NaN slips past `step <= 0` alone
        raise ConfigError(f"step must be a positive finite number, got {step}")
    if not math.isfinite(tolerance) or tolerance <= 0:  # NaN fails every entry, inf none
        raise ConfigError(f"tolerance must be a positive finite number, got {tolerance}")

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
        base_loss = loss()
        grads = torch.autograd.grad(base_loss, [p for _, p in params], allow_unused=True)
    base = base_loss.item()

    def floor_at(h: float) -> float:
        return max(floor, NOISE_FACTOR * EPS64 * max(abs(base), 1.0) / h)

    def entry_error(p: torch.Tensor, idx: tuple[int, ...], g_auto: float) -> tuple[float, float]:
        """(relative, absolute) error of one entry; see the module docstring on kinks."""
        best = (math.inf, math.inf)
        original = p[idx].clone()
        for h in (step * f for f in RETRY_FACTORS):
            p[idx] = original + h
            plus = loss().item()
            p[idx] = original - h
            minus = loss().item()
            p[idx] = original
            for g_num in ((plus - minus) / (2 * h), (plus - base) / h, (base - minus) / h):
                abs_err = abs(g_num - g_auto)
                rel_err = abs_err / max(abs(g_num) + abs(g_auto), floor_at(h))
                if rel_err < best[0]:  # a NaN never compares smaller: it fails with inf
                    best = (rel_err, abs_err)
            if best[0] <= tolerance:
                break
        return best

    gen = torch.Generator().manual_seed(seed)
    counts = _sample_counts([p.numel() for _, p in params], max_params)
    per_tensor: list[TensorCheck] = []
    worst: tuple[float, str, tuple[int, ...]] = (-1.0, "", ())  # (rel error, name, index)
    with torch.no_grad():
        for (pname, p), grad, count in zip(params, grads, counts, strict=True):
            auto = torch.zeros_like(p) if grad is None else grad
            t_rel = t_abs = 0.0
            for flat in torch.randperm(p.numel(), generator=gen)[:count].tolist():
                idx = _unravel(flat, p.shape)
                rel_err, abs_err = entry_error(p, idx, auto[idx].item())
                t_rel, t_abs = max(t_rel, rel_err), max(t_abs, abs_err)
                if rel_err > worst[0]:
                    worst = (rel_err, pname, idx)
            per_tensor.append(
                TensorCheck(
                    name=pname,
                    shape=tuple(p.shape),
                    checked=count,
                    max_rel_error=t_rel,
                    max_abs_error=t_abs,
                )
            )

    max_rel, worst_name, worst_index = worst
    return GradCheckReport(
        model_name=name or type(model).__name__,
        dtype="float64",
        step=step,
        tolerance=tolerance,
        floor=floor_at(step),
        checked=sum(counts),
        max_rel_error=max_rel,
        max_abs_error=max(t.max_abs_error for t in per_tensor),
        worst_parameter=worst_name,
        worst_index=worst_index,
        passed=max_rel <= tolerance,
        per_tensor=tuple(per_tensor),
    )
