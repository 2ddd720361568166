"""Process-wide settings read from `HEADRACE_*` environment variables.

Loaded once at the entry point (the CLI) and passed down; command-line flags
override them. Job-specific options live in their own config models (e.g.
`training.config.TrainConfig`), not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

BROKER_SILENCE_S = 15.0  # above the few seconds a healthy broker takes (JoinGroup not counted)
UNASSIGNED_WARN_S = 20.0  # above a group join's 1 to 5 s and its 10 s rebalance timeout
WatchSeconds = Annotated[float, Field(gt=0, le=3600)]
"""How long a watch waits before it warns (`broker_silence_s`, `unassigned_warn_s`, and the
worker and agent configs that take them): positive, at most an hour."""


class Settings(BaseSettings):
    """Settings shared by every headrace command."""

    model_config = SettingsConfigDict(env_prefix="HEADRACE_", extra="ignore")

    model_repository: Path = Field(
        default=Path("model_repository"),
        description="Folder of the Triton-style model repository (HEADRACE_MODEL_REPOSITORY).",
    )
    runs_dir: Path = Field(
        default=Path("runs"),
        description="Training checkpoints and TensorBoard logs (HEADRACE_RUNS_DIR).",
    )
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (HEADRACE_KAFKA_BOOTSTRAP); unset = the embedded "
        "broker started by `headrace broker start`.",
    )
    state_dir: Path = Field(
        default=Path(".headrace"),
        description="Pid and port files of processes started by the CLI (HEADRACE_STATE_DIR).",
    )
    stream_group: str = Field(
        default="headrace-stream",
        description="Consumer group of `headrace stream worker` (HEADRACE_STREAM_GROUP).",
    )
    data_dir: Path | None = Field(
        default=None,
        description="Default folder for datasets read from files (HEADRACE_DATA_DIR).",
    )
    broker_silence_s: WatchSeconds = Field(
        default=BROKER_SILENCE_S,
        description="Seconds a stream or ingestion worker or the training agent waits for an "
        "answer from Kafka before it logs that it has lost the broker (HEADRACE_BROKER_SILENCE_S).",
    )
    unassigned_warn_s: WatchSeconds = Field(
        default=UNASSIGNED_WARN_S,
        description="Seconds a stream worker or the training agent waits for its consumer "
        "group's first assignment before it warns that the group has not finished a rebalance, "
        "and again every this long (HEADRACE_UNASSIGNED_WARN_S).",
    )
    data_root: Path = Field(
        default=Path("data"),
        description="Where `headrace data ingest` writes dataset shards and training on shards "
        "reads them: <root>/<dataset>/shards (HEADRACE_DATA_ROOT).",
    )


def load_settings() -> Settings:
    """Read the settings from the environment."""
    return Settings()
