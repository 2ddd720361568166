"""Model architectures under registered names.

`build_model("lenet5")` or `build_model("resnet20", in_channels=3)`; each entry
knows its default input shape (C, H, W) so callers can make example inputs.
Every architecture takes a `width` (channel multiplier, 1.0 = its classic sizes)
and a `dropout` rate (0.0 = none); the defaults build exactly the classic model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from headrace.errors import ConfigError, UnknownName
from training.models.lenet import LeNet5
from training.models.lenet_wide import LeNetWide
from training.models.resnet import ResNetSmall

__all__ = ["MODELS", "ModelEntry", "build_model", "input_shape"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: how to build it and the input it expects by default."""

    factory: Callable[[int, int, int, float, float], nn.Module]
    # (num_classes, in_channels, image_size, width, dropout)
    default_input: tuple[int, int, int]
    description: str


MODELS: dict[str, ModelEntry] = {
    "lenet5": ModelEntry(
        factory=lambda classes, channels, size, width, dropout: LeNet5(
            classes, channels, size, width=width, dropout=dropout
        ),
        default_input=(1, 28, 28),
        description="LeNet-5 (tanh, average pooling), 28x28 or 32x32 input",
    ),
    "lenet5-wide": ModelEntry(
        factory=lambda classes, channels, size, width, dropout: LeNetWide(
            classes, channels, size, width=width, dropout=dropout
        ),
        default_input=(1, 28, 28),
        description="LeNet layout, 16/32 channels, 128 hidden, ReLU and max pooling "
        "(for adversarial training), 28x28 or 32x32 input",
    ),
    "resnet20": ModelEntry(
        factory=lambda classes, channels, size, width, dropout: ResNetSmall(
            classes, channels, 3, width=width, dropout=dropout
        ),
        default_input=(3, 32, 32),
        description="ResNet-20 for 32x32 colour images",
    ),
}


def _entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise UnknownName(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name]


def input_shape(name: str) -> tuple[int, int, int]:
    """Default (C, H, W) input of a registered architecture."""
    return _entry(name).default_input


def build_model(
    name: str,
    num_classes: int = 10,
    in_channels: int | None = None,
    image_size: int | None = None,
    width: float = 1.0,
    dropout: float = 0.0,
) -> nn.Module:
    """A freshly initialised model of a registered architecture."""
    entry = _entry(name)
    if not 0 < width <= 16:
        raise ConfigError(f"model width must be in (0, 16], got {width}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    channels = in_channels if in_channels is not None else entry.default_input[0]
    size = image_size if image_size is not None else entry.default_input[1]
    return entry.factory(num_classes, channels, size, width, dropout)
