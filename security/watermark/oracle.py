"""What a black-box verifier queries: a served model seen from outside, as a client sees it.

An `Oracle` takes raw uint8 pixels and answers the predicted class of each row;
it preprocesses them exactly as any client of that endpoint would (the
model's published `PreprocessingSpec`). It is never given the key: the
verifier derives the trigger set locally and sends only its inputs.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from pydantic import BaseModel, Field


class OracleSpec(BaseModel):
    """What the verifier needs to know about the model behind an oracle."""

    input_shape: tuple[int, ...] = Field(description="(C, H, W) of one raw input.")
    num_classes: int = Field(ge=2)
    target: str = Field(description="What is being queried, for reports (no secrets).")


class Oracle(Protocol):
    """A model queried as a black box."""

    def describe(self) -> OracleSpec:
        """The model's input shape and number of classes."""
        ...

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Predicted class (int64) of each row of raw uint8 pixels shaped (N, C, H, W)."""
        ...
