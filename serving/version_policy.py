"""Which versions of each model a server serves: Triton's `version_policy`.

Its own module, with nothing but pydantic, so that the stream worker's settings and the
protocol conversions can name it without loading the model manager (and ONNX Runtime).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VersionPolicy(BaseModel):
    """Which versions of each model to serve (Triton's `version_policy`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["latest", "all", "specific"] = "latest"
    latest_n: int = Field(default=1, ge=1, description="How many of the newest versions to serve.")
    versions: list[int] = Field(default_factory=list, description="Versions for kind=specific.")

    @model_validator(mode="after")
    def _specific_has_versions(self) -> VersionPolicy:
        if self.kind == "specific" and not self.versions:
            raise ValueError("version policy 'specific' needs at least one version")
        return self

    def describe(self) -> str:
        """The policy as `--version-policy` spells it: latest:N, all or specific:1,2."""
        if self.kind == "all":
            return "all"
        if self.kind == "latest":
            return f"latest:{self.latest_n}"
        return "specific:" + ",".join(map(str, self.versions))

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among `available` (ascending)."""
        if self.kind == "all":
            return list(available)
        if self.kind == "latest":
            return available[-self.latest_n :]
        return sorted(set(self.versions) & set(available))
