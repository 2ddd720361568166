"""A wider, modern LeNet for adversarial training: ReLU, max pooling, more channels.

Same layout as LeNet-5 (two 5x5 convolutions with 2x2 pooling, then two fully
connected layers) but 16 and 32 channels, a 128-unit hidden layer, ReLU and
max pooling: conv 16@5x5 -> maxpool -> conv 32@5x5 -> maxpool -> 128 -> classes.
Robustness to L-inf attacks needs capacity (Madry et al. use 32/64 channels
and 1024 units); this is the smallest step up from LeNet-5 that PGD training
on one CPU core turns into a robust MNIST model in minutes (see
benchmarks/robustness.py). `width` multiplies channels and hidden units;
`dropout` > 0 adds dropout after the hidden layer (same state_dict names).
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.lenet import activation, scaled


class LeNetWide(nn.Module):
    """LeNet layout, 16/32 channels, ReLU and max pooling; 28x28 or 32x32 input; logits out."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 128,
        width: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        padding = 2 if image_size == 28 else 0
        first, second = scaled(channels[0], width), scaled(channels[1], width)
        hidden = scaled(hidden, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, first, kernel_size=5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(first, second, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(second * 5 * 5, hidden),
            activation(nn.ReLU, dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
