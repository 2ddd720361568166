"""The compression job's configuration: one pydantic model, validated whole before any work starts.

A job starts from a published version (the source), optionally prunes channels,
fine-tunes (with a distillation term when a teacher is named), optionally runs
quantization-aware training, and publishes the exported ONNX file as a new
version. `epochs` is the fine-tuning after pruning or with distillation;
`qat_epochs` is the quantization-aware training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.model_config import check_model_name

PruneMethod = Literal["l1", "l2"]
QuantMode = Literal["int8", "int4"]
DEFAULT_SPARSITY = 0.5


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` or `NAME:VERSION` -> (name, version or None); ValueError if malformed."""
    name, sep, version = ref.partition(":")
    check_model_name(name)
    if not sep:
        return name, None
    if not version.isdecimal() or int(version) < 1:
        raise ValueError(
            f"invalid model reference {ref!r}: use NAME or NAME:VERSION (VERSION >= 1)"
        )
    return name, int(version)


class CompressConfig(BaseModel):
    """Everything `headrace compress` needs; flags and environment settings fill it in."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="Published model name to compress.")
    source_version: int | None = Field(
        default=None, ge=1, description="Version to start from; default the latest uncompressed."
    )
    prune: PruneMethod | None = Field(
        default=None, description="Channel pruning criterion (weight norm), or None for none."
    )
    sparsity: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description=f"Fraction of channels removed by pruning (default {DEFAULT_SPARSITY}).",
    )
    quant: QuantMode | None = Field(
        default=None, description="Weight precision of quantization-aware training, or None."
    )
    quantize_activations: bool = Field(
        default=True, description="Also fake-quantize layer inputs (uint8, affine) during QAT."
    )
    distill_from: str | None = Field(
        default=None, description="Teacher model, NAME or NAME:VERSION (default its latest)."
    )
    temperature: float = Field(default=4.0, gt=0, le=100, description="Distillation temperature.")
    alpha: float = Field(
        default=0.7, ge=0, le=100, description="Weight of the distillation term (labels: 1)."
    )
    epochs: int = Field(
        default=10, ge=1, le=1000, description="Fine-tuning epochs after pruning / with a teacher."
    )
    qat_epochs: int = Field(default=5, ge=1, le=1000, description="Quantization-aware epochs.")
    learning_rate: float = Field(
        default=5e-4,
        gt=0,
        le=10,
        description="Adam rate of fine-tuning after pruning / distilling.",
    )
    qat_learning_rate: float = Field(
        default=1e-4,
        gt=0,
        le=10,
        description="Adam rate of QAT: small, as QAT only adjusts a trained model to its grid.",
    )
    batch_size: int = Field(default=64, ge=1, le=65_536)
    seed: int | None = Field(default=None, ge=0, description="Default: the source's own seed.")
    data_dir: Path | None = Field(
        default=None,
        description="--data-dir: folder of a file-based dataset; refused for a source trained "
        "on an embedded one. None = the process's (HEADRACE_DATA_DIR).",
    )
    data_root: Path | None = Field(
        default=None,
        description="Data root of the ingested shards a source trained on; None = the "
        "process's (HEADRACE_DATA_ROOT, else ./data).",
    )
    name: str | None = Field(
        default=None, description="Publish under this name; default the source's name."
    )
    repository: Path = Path("model_repository")
    runs_dir: Path = Path("runs")
    publish: bool = Field(default=True, description="Publish the result to the repository.")
    latency_seconds: float = Field(
        default=0.5, gt=0, le=600, description="Measuring time per model and batch size."
    )
    progress: bool = Field(default=True, description="Show training progress on stderr.")

    @field_validator("source", "name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        return None if value is None else check_model_name(value)

    @field_validator("distill_from")
    @classmethod
    def _valid_teacher(cls, value: str | None) -> str | None:
        if value is not None:
            parse_model_ref(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CompressConfig:
        problems: list[str] = []
        if self.prune is None and self.quant is None and self.distill_from is None:
            problems.append("nothing to do: pass --prune, --quant and/or --distill-from")
        if self.sparsity is not None and self.prune is None:
            problems.append("sparsity needs a pruning method (--prune l1 or l2)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def target_sparsity(self) -> float:
        """The pruning sparsity, with its default."""
        return DEFAULT_SPARSITY if self.sparsity is None else self.sparsity

    @property
    def quant_bits(self) -> int | None:
        """Weight bits of QAT (8 or 4), or None without quantization."""
        return None if self.quant is None else int(self.quant.removeprefix("int"))

    def summary(self) -> str:
        """A short label of the methods, in this order, e.g. `prune-l1-0.5+distill+int8`."""
        parts = []
        if self.prune is not None:
            parts.append(f"prune-{self.prune}-{self.target_sparsity:g}")
        if self.distill_from is not None:
            parts.append("distill")
        if self.quant is not None:
            parts.append(self.quant)
        return "+".join(parts)
