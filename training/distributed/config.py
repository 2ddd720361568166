"""How a training job is spread over workers: strategy, local-SGD period and gradient compression.

This is the `distributed` section of a training job spec and of `TrainConfig`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_WARMUP_STEPS = 1_000_000_000
"""More optimizer steps than any run takes (10,000 epochs of MNIST's 60,000 images at batch 1
are 6e8): a larger PowerSGD warm-up would never end, i.e. is a typo for `compression: none`."""


class NoCompression(BaseModel):
    """Gradients travel as float32."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["none"] = "none"


class Fp16Compression(BaseModel):
    """Gradients travel as float16 (half the bytes)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["fp16"] = "fp16"


class TopKCompression(BaseModel):
    """Only the largest `ratio` of gradient entries travel (values + indices)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["topk"] = "topk"
    ratio: float = Field(default=0.01, gt=0, le=1, description="Fraction of entries sent.")
    error_feedback: bool = Field(
        default=True, description="Add what was not sent to the next step's gradient."
    )


class PowerSgdCompression(BaseModel):
    """Low-rank (PowerSGD) gradient approximation of the given rank."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["powersgd"] = "powersgd"
    rank: int = Field(default=2, ge=1, le=64, description="Rank of the approximation.")
    warmup_steps: int = Field(
        default=0,
        ge=0,
        le=MAX_WARMUP_STEPS,
        description="Steps sent uncompressed before compression starts.",
    )


Compression = Annotated[
    NoCompression | Fp16Compression | TopKCompression | PowerSgdCompression,
    Field(discriminator="kind"),
]


class DistributedConfig(BaseModel):
    """`distributed:` in a job spec. One worker means plain single-process training on Ray."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(default=1, ge=1, le=1024, description="Training processes (Ray workers).")
    strategy: Literal["allreduce", "parameter_server", "hybrid"] = Field(
        default="allreduce",
        description="allreduce: DDP over gloo; parameter_server: Ray actors hold parameter "
        "shards; hybrid: fully-connected layers through the parameter server, the rest by "
        "allreduce.",
    )
    sync_every: int = Field(
        default=1, ge=1, le=10_000, description="Local-SGD period: steps between synchronisations."
    )
    compression: Compression = Field(default_factory=NoCompression)
    server_shards: int = Field(
        default=1, ge=1, le=64, description="Parameter-server actors (parameter_server, hybrid)."
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Times the worker group is restarted from the last checkpoint after a "
        "worker dies.",
    )

    @field_validator("compression", mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        """`compression: topk` means the kind with its default settings."""
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> DistributedConfig:
        problems = []
        if self.strategy == "allreduce" and self.server_shards != 1:
            problems.append("server_shards applies to parameter_server and hybrid only")
        if self.strategy != "allreduce" and self.compression.kind == "powersgd":
            problems.append(
                "powersgd compresses allreduce buckets: use strategy allreduce, "
                "or compression fp16/topk with parameter_server and hybrid"
            )
        if self.sync_every > 1 and self.strategy != "allreduce":
            problems.append("sync_every > 1 (local SGD) applies to strategy allreduce only")
        if self.sync_every > 1 and self.compression.kind != "none":
            problems.append(
                "sync_every > 1 averages parameters every few steps, uncompressed: "
                "set compression none, or sync_every 1 to compress gradients"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self
