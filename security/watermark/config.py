"""How a training job embeds a watermark (`TrainConfig.watermark`): the key file and two knobs.

The config names the key file instead of holding the secret, so a job spec can
cross processes and topics without carrying the key.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class WatermarkConfig(BaseModel):
    """Embed the watermark of the key in `key_file` while training."""

    model_config = ConfigDict(extra="forbid")

    key_file: Path = Field(description="Secret key file written by `headrace watermark keygen`.")
    triggers_per_batch: int = Field(
        default=8, ge=1, le=1024, description="Trigger samples added to every training batch."
    )
    whitebox_strength: float = Field(
        default=0.1,
        ge=0.0,
        le=100.0,
        description="Weight of the white-box signature regulariser in the loss (0 = off).",
    )
