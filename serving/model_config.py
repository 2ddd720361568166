"""Schemas of the model repository's files: `config.json` per model, `metadata.json` per version.

The layout follows Triton's model repository: `<repo>/<model>/config.json` and
`<repo>/<model>/<version>/model.onnx`. `dims` exclude the batch axis when
`max_batch_size > 0`, as in Triton. These files cross process boundaries
(serving, stream workers, training), so they are pydantic models with a
schema version.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


def check_model_name(name: str) -> str:
    """A model name is a single folder name: letters, digits, `_`, `-`, `.`; no path parts."""
    if not MODEL_NAME_PATTERN.match(name) or name in {".", ".."}:
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '_', '-' or '.' "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return name


def validation_problems(exc: ValidationError, whole: str = "") -> str:
    """A validation error on one line, 'field: problem; ...': pydantic's own text spans lines
    and quotes the input (the whole file for a JSON error) and a documentation URL. A problem
    of the whole model (no field) is prefixed with `whole` when one is given."""
    problems = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")  # a validator's own text
        where = ".".join(map(str, error["loc"])) or whole
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


class TensorSpec(BaseModel):
    """One input or output tensor of a model."""

    model_config = ConfigDict(extra="forbid")

    name: str
    datatype: Datatype = "FP32"
    dims: list[int] = Field(description="Shape without the batch axis; -1 for a variable size.")


class PreprocessingSpec(BaseModel):
    """How raw pixels become model input: `(pixels * scale - mean[c]) / std[c]`, then reshape."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(default=1.0 / 255.0, description="Multiplier applied to raw pixel values.")
    mean: list[float] = Field(description="Per-channel mean subtracted after scaling.")
    std: list[float] = Field(description="Per-channel standard deviation divided by.")
    layout: Literal["NCHW"] = "NCHW"

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Raw pixels (N, C, H, W) -> float32 model input: `(pixels * scale - mean[c]) / std[c]`,
        computed as `pixels * (scale / std[c]) - mean[c] / std[c]` in place on one copy."""
        gain, offset = _affine(self.scale, tuple(self.mean), tuple(self.std))
        out = pixels.astype(np.float32)
        out *= gain
        out -= offset
        return out

    @model_validator(mode="after")
    def _same_channels(self) -> PreprocessingSpec:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


@functools.lru_cache(maxsize=64)
def _affine(
    scale: float, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel gain and offset of a preprocessing spec, as (1, C, 1, 1) float32 arrays."""
    std_a = np.asarray(std, dtype=np.float64).reshape(1, -1, 1, 1)
    mean_a = np.asarray(mean, dtype=np.float64).reshape(1, -1, 1, 1)
    return (scale / std_a).astype(np.float32), (mean_a / std_a).astype(np.float32)


MAX_BATCH_SIZE = 65_536
"""Largest `max_batch_size` a config.json may set. It goes into Triton's ModelConfig
`max_batch_size`, an int32 (from 2**31 on, the ModelConfig call fails for the model), and no
batch of more rows than this is a serving batch."""


MAX_INSTANCES = 256
"""Most instances a config.json may ask for (`instance_count`, `autoscaling.min_instances` and
`max_instances`). Triton sets no bound, but each instance here is an ONNX Runtime session with
its own copy of the weights and at least one thread, all built when the model loads: a config
asking for 100,000 built sessions until memory ran out (a LeNet-5 server grew by ~150 MB/s and
never became ready). On CPU, instances beyond the cores add no throughput; 256 is one per
hardware thread of a large two-socket server."""


MAX_QUEUE_DELAY_US = 3_600_000_000
"""Longest `max_queue_delay_us` a config.json may set: one hour. Triton's ModelConfig field is
a uint64, which cannot hold 2**64 or more, and a request held an hour to fill a batch is a
mistyped unit, not a serving setting."""


class DynamicBatchingConfig(BaseModel):
    """Triton's dynamic batching settings."""

    model_config = ConfigDict(extra="forbid")

    max_queue_delay_us: int = Field(
        default=2000, ge=0, le=MAX_QUEUE_DELAY_US, description="Longest wait to fill a batch."
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="Each size once: a repeat is dropped, as Triton does."
    )
    max_queue_size: int = Field(default=1024, ge=1, description="Requests queued before refusing.")

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _each_size_once(cls, sizes: list[int]) -> list[int]:
        """Triton's scheduler keeps the sizes in a set; kept as listed, 100,000 copies of 1
        were held and echoed back by get_model_config."""
        return list(dict.fromkeys(sizes))


class AutoscalingConfig(BaseModel):
    """Instances move between `min_instances` and `max_instances` by queue depth."""

    model_config = ConfigDict(extra="forbid")

    min_instances: int = Field(default=1, ge=1, le=MAX_INSTANCES)
    max_instances: int = Field(default=4, ge=1, le=MAX_INSTANCES)
    target_queue_depth: float = Field(
        default=4.0, gt=0, description="Queued requests per instance above which to scale up."
    )
    cooldown_s: float = Field(default=10.0, ge=0, description="Least time between two decisions.")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_instances > self.max_instances:
            raise ValueError("min_instances must not exceed max_instances")
        return self


class ModelConfig(BaseModel):
    """`<repo>/<model>/config.json`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    name: str
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    max_batch_size: int = Field(default=64, ge=0, le=MAX_BATCH_SIZE)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_batching: DynamicBatchingConfig = Field(default_factory=DynamicBatchingConfig)
    instance_count: int = Field(
        default=1,
        ge=1,
        le=MAX_INSTANCES,
        description="ONNX Runtime sessions serving the model; with autoscaling, where it "
        "starts (within min_instances..max_instances; left out, min_instances).",
    )
    preprocessing: PreprocessingSpec | None = None
    labels: list[str] = Field(default_factory=list, description="Class names by output index.")
    reject_non_finite: bool = Field(
        default=True, description="Refuse floating-point inputs holding NaN or infinity."
    )
    autoscaling: AutoscalingConfig | None = Field(
        default=None, description="Scale instances by queue depth; None keeps instance_count."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_model_name(value)

    @model_validator(mode="after")
    def _instances_within_scaling(self) -> ModelConfig:
        """The autoscaler runs a model within its range whatever instance_count says: count 10
        in 2..3 loaded 3 sessions while get_model_config answered 10."""
        scaling = self.autoscaling
        if scaling is None:
            return self
        low, high = scaling.min_instances, scaling.max_instances
        if "instance_count" not in self.model_fields_set:
            self.instance_count = low  # where the autoscaler starts it
        elif not low <= self.instance_count <= high:
            raise ValueError(
                f"instance_count {self.instance_count} lies outside autoscaling's "
                f"min_instances..max_instances ({low}..{high}), within which the model's "
                "instances are kept: give a count in that range (where the model starts), or "
                "leave instance_count out to start at min_instances"
            )
        return self

    @model_validator(mode="after")
    def _preferred_sizes_fit(self) -> ModelConfig:
        preferred = self.dynamic_batching.preferred_batch_sizes
        wrong = [size for size in preferred if not 1 <= size <= self.max_batch_size]
        if wrong and self.max_batch_size == 0:
            raise ValueError(
                "a model without a batch axis (max_batch_size 0) takes no "
                f"dynamic_batching.preferred_batch_sizes, got {preferred}"
            )
        if wrong:
            raise ValueError(
                f"dynamic_batching.preferred_batch_sizes must lie in 1..max_batch_size "
                f"({self.max_batch_size}), got {preferred}"
            )
        return self


class VersionMetadata(BaseModel):
    """`<repo>/<model>/<version>/metadata.json`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    version: int = Field(ge=1)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    architecture: str = Field(description="Registered model name, e.g. lenet5.")
    architecture_options: dict[str, float] = Field(
        default_factory=dict,
        description="Options the architecture was built with (width, dropout); "
        "absent keys take the architecture's defaults.",
    )
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    watermark_id: str | None = None
    preprocessing: PreprocessingSpec | None = Field(
        default=None,
        description="The preprocessing this version was trained with; the version is served "
        "with it, whatever the model's config.json (which follows the latest publish) says. "
        "Absent in versions published before it was recorded: they take config.json's.",
    )
    sha256: dict[str, str] = Field(
        default_factory=dict, description="File name -> sha256 of each file in the version folder."
    )
