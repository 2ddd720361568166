"""The stream worker's settings, validated once at the entry point (`headrace stream worker`).

The broker timings are not options: they are the values the embedded broker
needs (see DESIGN.md, "Known facts about the embedded broker") and work on
Apache Kafka too, so they live as constants in `streams.faust_app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from headrace.settings import BROKER_SILENCE_S, UNASSIGNED_WARN_S, WatchSeconds
from serving.version_policy import VersionPolicy

DEFAULT_GROUP = "headrace-stream"
ProcessingGuarantee = Literal["at_least_once", "exactly_once"]


class StreamWorkerConfig(BaseModel):
    """What one `headrace stream worker` process consumes, runs and where it reports."""

    model_config = ConfigDict(extra="forbid")

    repository: Path = Field(description="Model repository folder.")
    bootstrap: str = Field(min_length=1, description="Kafka bootstrap servers, comma-separated.")
    group_id: str = Field(
        default=DEFAULT_GROUP,
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Consumer group (and Faust app id); workers of one group share the work.",
    )
    concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Agent actors: batches run at once, and at most as many more awaiting the "
        "broker's acknowledgements of their outcomes.",
    )
    max_batch: int = Field(default=64, ge=1, le=4096, description="Records per taken batch.")
    max_delay_s: float = Field(
        default=0.005, gt=0, le=10.0, description="Longest wait to fill a batch, in seconds."
    )
    max_buffered: int = Field(
        default=4096,
        ge=8,
        le=1_000_000,
        description="Records fetched but not yet taken into a batch; when the buffer nears this, "
        "fetching pauses until it has drained to half (backpressure).",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Prometheus /metrics port (0 = free, None = off)."
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address /metrics listens on (0.0.0.0 in a container, for Prometheus).",
    )
    processing_guarantee: ProcessingGuarantee = Field(
        default="at_least_once",
        description="at_least_once: offsets committed after the outcomes are acknowledged; a "
        "crash can repeat outcomes (readers drop them by request id). exactly_once: outcomes "
        "and offsets committed in one Kafka transaction per source partition, so "
        "read_committed readers see each outcome once; needs a broker whose transactions "
        "hold (Apache Kafka; checked at start).",
    )
    poll_interval_s: float = Field(
        default=2.0, ge=0, description="Seconds between model repository polls (0 = off)."
    )
    version_policy: VersionPolicy = Field(
        default_factory=VersionPolicy,
        description="Which versions of each model to serve, as `headrace serve` does: requests "
        "pinned to a `version` reach only these.",
    )
    broker_silence_s: WatchSeconds = Field(
        default=BROKER_SILENCE_S,
        description="Seconds without an answer from Kafka after which the worker logs that it "
        "has lost its broker and /metrics shows stream_broker_reachable 0 "
        "(HEADRACE_BROKER_SILENCE_S).",
    )
    unassigned_warn_s: WatchSeconds = Field(
        default=UNASSIGNED_WARN_S,
        description="Seconds without a first assignment from the consumer group after which "
        "the worker warns that the group has not finished a rebalance, and again every this "
        "long (HEADRACE_UNASSIGNED_WARN_S).",
    )
    updates_topic: str = "model-updates"
    requests_topic: str = "inference-requests"
    results_topic: str = "inference-results"
    dlq_topic: str = "inference-dlq"

    @field_validator("bootstrap")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdecimal():
                raise ValueError(f"bootstrap server {server!r} must be HOST:PORT")
        return value

    def broker_urls(self) -> list[str]:
        """The bootstrap servers as Faust broker URLs."""
        return [f"kafka://{server.strip()}" for server in self.bootstrap.split(",")]
