"""A small ResNet for 32x32 colour images (ResNet-20 of He et al., CIFAR variant).

Three stages of basic blocks with 16, 32 and 64 channels; `blocks_per_stage=3`
gives ResNet-20 (about 0.27 M parameters). Downsampling uses a strided 1x1
projection shortcut. `width` multiplies the three stages' channels; `dropout`
> 0 drops pooled features before the classifier (same state_dict names).
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.lenet import scaled


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """ResNet for 32x32 inputs; returns logits."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        blocks_per_stage: int = 3,
        width: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [scaled(units, width) for units in (16, 32, 64)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        channels = widths[0]
        for stage, out_channels in enumerate(widths):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*layers)
        flatten = nn.Flatten() if dropout <= 0 else nn.Sequential(nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), flatten, nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
