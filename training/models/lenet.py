"""LeNet-5 in its classic shape: tanh activations and average pooling.

Input is a 28x28 image padded to LeNet's 32x32 by the first convolution
(padding 2): conv 6@5x5 -> avgpool -> conv 16@5x5 -> avgpool -> 120 -> 84 -> classes.

`width` multiplies every layer's channels and hidden units (1.0 = the classic
sizes); `dropout` > 0 adds dropout after each hidden layer's activation. Dropout
sits inside the activation's slot (`activation(dropout)`), so the parameter names
of the state_dict are the same for every dropout rate.
"""

from __future__ import annotations

import torch
from torch import nn


def scaled(units: int, width: float) -> int:
    """`units` times a width multiplier, rounded, at least 1."""
    return max(1, round(units * width))


def activation(kind: type[nn.Module], dropout: float) -> nn.Module:
    """An activation, followed by dropout when `dropout` > 0 (no parameters either way)."""
    if dropout <= 0:
        return kind()
    return nn.Sequential(kind(), nn.Dropout(dropout))


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 (or 32x32) images; returns logits."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        width: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        padding = 2 if image_size == 28 else 0
        c1, c2 = scaled(6, width), scaled(16, width)
        h1, h2 = scaled(120, width), scaled(84, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5, padding=padding),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5),
            nn.Tanh(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 5 * 5, h1),
            activation(nn.Tanh, dropout),
            nn.Linear(h1, h2),
            activation(nn.Tanh, dropout),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
