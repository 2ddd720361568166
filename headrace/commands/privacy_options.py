"""The `--dp-*` flags of `headrace train`, turned into `TrainConfig.privacy`.

With `--dp-epsilon`, the training flags the user did not type (epochs, batch
size, learning rate, optimizer, schedule, augmentation, normalisation) are left
out of the config so that TrainConfig fills in the DP-SGD defaults
(training/privacy.py `DP_DEFAULTS`); flags typed on the command line win.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from headrace.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
ModelT = TypeVar("ModelT")

# click parameter -> where its value sits in TrainConfig's input
_DP_DEFAULTED: dict[str, tuple[str, ...]] = {
    "epochs": ("epochs",),
    "batch_size": ("batch_size",),
    "learning_rate": ("learning_rate",),
    "optimizer": ("optimizer",),
    "lr_schedule": ("lr_schedule",),
    "normalize": ("preprocess", "normalize"),
    "augment": ("preprocess", "augment"),
}

_OPTIONS = [
    click.option(
        "--dp-epsilon",
        type=float,
        default=None,
        help="Differentially private training (DP-SGD, Opacus) with this epsilon budget. "
        "Flags not given then take DP defaults: --epochs 10 --batch-size 512 --optimizer sgd "
        "--lr 0.5 --lr-schedule none --no-augment --no-normalize (docs/privacy.md).",
    ),
    click.option(
        "--dp-delta", type=float, help="DP delta, below 1 / training samples [default: 1e-5]."
    ),
    click.option(
        "--max-grad-norm",
        type=float,
        help="DP: clip each sample's gradient to this L2 norm [default: 1.0].",
    ),
]


def privacy_options(command: F) -> F:
    """Add the differential-privacy flags to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def privacy_settings(
    epsilon: float | None, delta: float | None, max_grad_norm: float | None
) -> dict[str, Any] | None:
    """The `privacy` entry of a TrainConfig built from the flags (None when off)."""
    if epsilon is None:
        for flag, value in (("--dp-delta", delta), ("--max-grad-norm", max_grad_norm)):
            if value is not None:
                raise ConfigError(f"{flag} only applies with --dp-epsilon")
        return None
    given = {"target_epsilon": epsilon, "target_delta": delta, "max_grad_norm": max_grad_norm}
    return {key: value for key, value in given.items() if value is not None}


def dp_defaults_apply(factory: Callable[..., ModelT]) -> Callable[..., ModelT]:
    """`factory` called without the training flags left at their click defaults when the
    config is private, so that the DP defaults apply to them."""
    context = click.get_current_context()

    def build(**values: Any) -> ModelT:
        if values.get("privacy") is None:
            return factory(**values)
        values = {**values, "preprocess": dict(values.get("preprocess") or {})}
        for parameter, path in _DP_DEFAULTED.items():
            source = context.get_parameter_source(parameter)
            if source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
                continue
            holder = values
            for key in path[:-1]:
                holder = holder[key]
            holder.pop(path[-1], None)
        return factory(**values)

    return build
