"""Model architectures under registered names.

`build_model("lenet5")` or `build_model("resnet20", in_channels=3)`; each entry
knows its default input shape (C, H, W) so callers can make example inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from headrace.errors import UnknownName
from training.models.lenet import LeNet5
from training.models.lenet_wide import LeNetWide
from training.models.resnet import ResNetSmall

__all__ = ["MODELS", "ModelEntry", "build_model", "input_shape"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: how to build it and the input it expects by default."""

    factory: Callable[[int, int, int], nn.Module]  # (num_classes, in_channels, image_size)
    default_input: tuple[int, int, int]
    description: str


MODELS: dict[str, ModelEntry] = {
    "lenet5": ModelEntry(
        factory=lambda classes, channels, size: LeNet5(classes, channels, size),
        default_input=(1, 28, 28),
        description="LeNet-5 (tanh, average pooling), 28x28 or 32x32 input",
    ),
    "lenet5-wide": ModelEntry(
        factory=lambda classes, channels, size: LeNetWide(classes, channels, size),
        default_input=(1, 28, 28),
        description="LeNet layout, 16/32 channels, 128 hidden, ReLU and max pooling "
        "(for adversarial training), 28x28 or 32x32 input",
    ),
    "resnet20": ModelEntry(
        factory=lambda classes, channels, size: ResNetSmall(classes, channels, 3),
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
) -> nn.Module:
    """A freshly initialised model of a registered architecture."""
    entry = _entry(name)
    channels = in_channels if in_channels is not None else entry.default_input[0]
    size = image_size if image_size is not None else entry.default_input[1]
    return entry.factory(num_classes, channels, size)
