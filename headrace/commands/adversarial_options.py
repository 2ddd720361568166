"""The `--adversarial` / `--adv-*` flags of `headrace train`, turned into `TrainConfig.adversarial`.

Unset `--adv-*` flags leave `AdversarialConfig`'s defaults in place, so the
defaults live in one spot (security/adversarial/config.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from headrace.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    click.option(
        "--adversarial",
        type=click.Choice(["pgd", "fgsm"]),
        default=None,
        help="Adversarial training: attack every training batch (pixel-space L-inf).",
    ),
    click.option(
        "--adv-epsilon", type=float, help="Attack radius in [0, 1] pixel units [default: 0.3]."
    ),
    click.option("--adv-steps", type=int, help="PGD steps per batch [default: 10]."),
    click.option(
        "--adv-step-size", type=float, help="PGD step size [default: 2.5 * epsilon / steps]."
    ),
    click.option(
        "--adv-clean-fraction", type=float, help="Share of each batch kept clean [default: 0]."
    ),
    click.option(
        "--adv-warmup-epochs",
        type=int,
        help="Ramp epsilon up over this many epochs [default: 0, full from the start].",
    ),
]


def adversarial_options(command: F) -> F:
    """Add the adversarial-training flags to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def adversarial_settings(
    method: str | None,
    epsilon: float | None,
    steps: int | None,
    step_size: float | None,
    clean_fraction: float | None,
    warmup_epochs: int | None,
) -> dict[str, Any] | None:
    """The `adversarial` entry of a TrainConfig built from the flags (None when off)."""
    given = {
        "epsilon": epsilon,
        "steps": steps,
        "step_size": step_size,
        "clean_fraction": clean_fraction,
        "warmup_epochs": warmup_epochs,
    }
    given = {key: value for key, value in given.items() if value is not None}
    if method is None:
        if given:
            flags = ", ".join(f"--adv-{key.replace('_', '-')}" for key in given)
            raise ConfigError(f"{flags} only apply with --adversarial pgd (or fgsm)")
        return None
    pgd_only = [key for key in ("steps", "step_size") if key in given]
    if method == "fgsm" and pgd_only:  # fgsm takes one step of epsilon: they would be ignored
        flags = ", ".join(f"--adv-{key.replace('_', '-')}" for key in pgd_only)
        raise ConfigError(
            f"{flags} only apply with --adversarial pgd; fgsm takes one step of --adv-epsilon"
        )
    return {"method": method, **given}
