"""Settings of the preprocessing pipeline: normalisation, augmentation, class balancing."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BalanceMode = Literal["none", "sampler", "loss"]

# Datasets whose classes survive a horizontal flip (a flipped "2" is not a "2").
FLIP_SAFE_DATASETS = frozenset({"cifar10"})


class AugmentConfig(BaseModel):
    """Random augmentation applied to training batches only."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    crop_padding: int = Field(
        default=2,
        ge=0,
        le=16,  # more pads 28x28 or 32x32 images mostly with zeros; 10**6 fails to allocate
        description="Pixels of zero padding before a random crop.",
    )
    rotation_deg: float = Field(
        default=10.0, ge=0, le=45, description="Largest random rotation, degrees."
    )
    horizontal_flip: bool | None = Field(
        default=None,
        description="Random left-right flips; None = only where the dataset allows it.",
    )

    def flips_for(self, dataset: str) -> bool:
        """Whether to flip images of `dataset`."""
        if self.horizontal_flip is None:
            return dataset in FLIP_SAFE_DATASETS
        return self.horizontal_flip


class PreprocessConfig(BaseModel):
    """The whole pipeline; `PreprocessConfig.off()` gives raw pixels scaled to [0, 1] only."""

    model_config = ConfigDict(extra="forbid")

    normalize: bool = Field(default=True, description="Standardise with training-split statistics.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    balance: BalanceMode = Field(
        default="none",
        description="Class balancing: a weighted sampler, a class-weighted loss, or none.",
    )

    @classmethod
    def off(cls) -> PreprocessConfig:
        """No normalisation, no augmentation, no balancing."""
        return cls(normalize=False, augment=AugmentConfig(enabled=False), balance="none")
