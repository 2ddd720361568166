"""The topic catalogue: every Kafka topic headrace uses, created idempotently.

Names follow Kafka conventions (lower-case, dash-separated); data topics are
per dataset (`data-<dataset>`). The embedded broker auto-creates topics with 4
partitions and accepts but does not apply `cleanup.policy`; a real cluster
applies every setting here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from headrace.errors import HeadraceError

DAY_MS = 24 * 60 * 60 * 1000


class TopicSpec(BaseModel):
    """One topic: its name, partitions and retention."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    retention_ms: int = Field(default=7 * DAY_MS, ge=-1, description="-1 keeps records forever.")
    cleanup_policy: str = "delete"
    description: str = ""

    def configs(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(name="inference-requests", description="Inference requests (OIP JSON or binary)."),
    TopicSpec(name="inference-results", description="One result per request, keyed by id."),
    TopicSpec(name="inference-dlq", retention_ms=30 * DAY_MS, description="Refused requests."),
    TopicSpec(name="training-jobs", partitions=1, description="Training and tuning job specs."),
    TopicSpec(name="training-events", partitions=1, description="Job progress and outcomes."),
    TopicSpec(
        name="model-updates",
        partitions=1,
        retention_ms=-1,
        cleanup_policy="compact",
        description="New model versions, for hot reload.",
    ),
    TopicSpec(
        name="data-dlq", retention_ms=30 * DAY_MS, description="Refused training-data records."
    ),
)


class TopicRefused(HeadraceError):
    """The broker answered a topic's creation with an error (ACLs, a create-topic policy, a
    replication factor above its brokers)."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "topic_refused"


DATA_TOPIC_PREFIX = "data-"
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
TOPIC_NAME_RULE = "1 to 249 letters, digits, '.', '_' or '-', and not '.' or '..'"


def valid_topic_name(name: str) -> bool:
    """Whether Kafka accepts `name` as a topic name (`TOPIC_NAME_RULE`)."""
    return bool(_TOPIC_NAME.match(name)) and name not in (".", "..")


def data_topic(dataset: str) -> TopicSpec:
    """The topic carrying training records of `dataset`."""
    return TopicSpec(
        name=f"{DATA_TOPIC_PREFIX}{dataset}", retention_ms=-1, description=f"Records of {dataset}."
    )


def create_topics(bootstrap: str, specs: Iterable[TopicSpec] = CATALOGUE) -> dict[str, str]:
    """Create missing topics; returns name -> "created" or "exists". Safe to run again.

    A topic the broker refuses raises `TopicRefused` saying which and why; kafka-python's error
    (a traceback quoting the whole request and response) reached users of `headrace topics
    create` and `train submit`, and `stream worker` reported it as Kafka being unreachable.
    Errors of an unreachable broker propagate as kafka-python raises them."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import BrokerResponseError, TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        outcome: dict[str, str] = {}
        for spec in specs:
            if spec.name in existing:
                outcome[spec.name] = "exists"
                continue
            topic = NewTopic(
                spec.name, spec.partitions, spec.replication_factor, topic_configs=spec.configs()
            )
            try:
                admin.create_topics([topic])
                outcome[spec.name] = "created"
            except TopicAlreadyExistsError:
                outcome[spec.name] = "exists"
            except BrokerResponseError as exc:
                raise TopicRefused(
                    f"the broker at {bootstrap} refused to create the topic {spec.name} "
                    f"({type(exc).__name__}: {exc.description.rstrip('.')}). Create it "
                    f"beforehand ({spec.partitions} partitions, replication factor "
                    f"{spec.replication_factor}) with a client allowed to, or allow this one "
                    "to create topics."
                ) from None
        return outcome
    finally:
        admin.close()


def list_topics(bootstrap: str) -> dict[str, int]:
    """Topic name -> partition count, as the broker reports them."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        return {
            name: len(consumer.partitions_for_topic(name) or ())
            for name in sorted(consumer.topics())
        }
    finally:
        consumer.close()
