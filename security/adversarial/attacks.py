"""FGSM and PGD L-inf attacks on a classifier seen in pixel space.

`model` maps float pixels in [0, 1] (N, C, H, W) to logits; wrap a trained
network with `PixelSpaceModel` so the attack sees the same normalisation as
training and serving. Adversarial images stay within `epsilon` of the
originals in L-inf and inside [0, 1].

Gradients are taken with `torch.autograd.grad` with respect to the input
only, so the model's parameter gradients are never touched, and the model's
mode (train / eval) is left as the caller set it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

_FOOLED_BONUS = 1e6  # added to the loss of misclassified iterates when ranking them
PixelModel = Callable[[torch.Tensor], torch.Tensor]
"""Float pixels in [0, 1], shaped (N, C, H, W) -> logits (N, classes)."""


def _check(pixels: torch.Tensor, epsilon: float) -> None:
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, not {epsilon}")
    if pixels.numel() and (float(pixels.min()) < 0.0 or float(pixels.max()) > 1.0):
        raise ValueError("attacks take pixels scaled to [0, 1]; scale or un-normalise them first")


def _project(adv: torch.Tensor, pixels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Clip `adv` into the L-inf ball of radius `epsilon` around `pixels`, and into [0, 1]."""
    return torch.min(torch.max(adv, pixels - epsilon), pixels + epsilon).clamp(0.0, 1.0)


def _random_point(
    pixels: torch.Tensor, epsilon: float, generator: torch.Generator | None
) -> torch.Tensor:
    noise = torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype)
    return _project(pixels + (noise.to(pixels.device) * 2 - 1) * epsilon, pixels, epsilon)


def _loss_and_grad(
    model: PixelModel, adv: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample attack score at `adv` and the loss gradient with respect to `adv`."""
    adv = adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(adv)
        losses = F.cross_entropy(logits, targets, reduction="none")
        (grad,) = torch.autograd.grad(losses.sum(), adv)
    return _score(logits.detach(), losses.detach(), targets), grad


def _score(logits: torch.Tensor, losses: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How well an iterate attacks each sample: any misclassification beats any loss value."""
    fooled = logits.argmax(dim=1) != targets
    return losses + fooled.to(losses.dtype) * _FOOLED_BONUS


def fgsm(
    model: PixelModel,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    epsilon: float,
    *,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al.): one step of `epsilon` along the sign.

    With `random_start` the step is taken from a random point of the ball (Wong et al.'s
    "fast" variant) with the full `epsilon` step, then projected back.
    """
    _check(pixels, epsilon)
    start = _random_point(pixels, epsilon, generator) if random_start else pixels
    _, grad = _loss_and_grad(model, start, targets)
    return _project(start + epsilon * grad.sign(), pixels, epsilon).detach()


def pgd(
    model: PixelModel,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    *,
    random_start: bool = True,
    keep_best: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the loss (Madry et al.), L-inf ball of radius `epsilon`.

    `steps` signed steps of `step_size`, each projected back into the ball and [0, 1].
    With `keep_best` each sample gets its best iterate: one that is misclassified if any
    was, else the one with the highest loss (a stronger attack for evaluation, at the
    cost of one extra forward pass); otherwise the last iterate.
    """
    _check(pixels, epsilon)
    if steps < 1 or step_size <= 0:
        raise ValueError(f"PGD needs steps >= 1 and step_size > 0, not {steps} and {step_size}")
    adv = _random_point(pixels, epsilon, generator) if random_start else pixels.clone()
    best, best_score = adv.clone(), torch.full((len(pixels),), -float("inf"))
    for _ in range(steps):
        score, grad = _loss_and_grad(model, adv, targets)
        if keep_best:
            better = score > best_score
            best[better], best_score[better] = adv[better], score[better]
        adv = _project(adv + step_size * grad.sign(), pixels, epsilon).detach()
    if not keep_best:
        return adv
    with torch.no_grad():
        logits = model(adv)
        score = _score(logits, F.cross_entropy(logits, targets, reduction="none"), targets)
    better = score > best_score
    best[better] = adv[better]
    return best
