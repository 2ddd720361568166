"""The training-job agent: runs each job from `training-jobs` on Ray, reports on `training-events`.

Jobs run one at a time in a background thread while the main loop keeps polling
the topic, so a `cancel` command reaches the running job at once and later
submissions wait their turn. A command's offset is committed only after its job
has ended (at-least-once): an agent killed mid-job runs it again after a
restart, resuming from the job's last checkpoint, and a job that had already
finished is reported from its saved report instead of being trained twice.
New versions are announced on `model-updates` (keyed by model name). Whether Kafka answers
the agent's consumer and producer is watched (`streams.broker_watch`): one warning when it has
not answered for `broker_silence_s`, one line when it answers again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from headrace.errors import ConfigError
from headrace.settings import BROKER_SILENCE_S, UNASSIGNED_WARN_S, WatchSeconds
from streams.broker_watch import BrokerWatch, check_until, watch_kafka_python
from streams.group_watch import AssignmentWatch
from streams.job_messages import (
    EVENTS_TOPIC,
    JOBS_TOPIC,
    UPDATES_TOPIC,
    JobCommand,
    ModelUpdate,
    TrainingEvent,
)
from streams.job_metrics import TrainingMetrics
from streams.job_runner import JobRunner, JobRunnerConfig
from training.datasets.shards import DEFAULT_DATA_ROOT
from training.job_spec import TrainingJobSpec

log = logging.getLogger(__name__)
POLL_MS = 200
STOP_JOIN_S = 60.0  # on stop, how long the cancelled job gets to end (deployments allow more)
# How long an event or announcement may wait for the broker's acknowledgement: the producer's
# own delivery timeout (it sends again meanwhile). A broker away for less holds the job at its
# next event and the job goes on once the broker is back; the 30 s wait used before failed a
# training job whose broker was away for 35 s ('failed: KafkaTimeoutError').
EVENT_DELIVERY_TIMEOUT_S = 600.0
EVENT_WAIT_WARN_S = 20.0  # an event still unacknowledged then is logged, once
STOP_FLUSH_S = 10.0  # on stop, how long events may wait for the broker (each of flush, close)
# Longest wait between two attempts to reconnect to a broker that went away (kafka-python
# adds up to 20% jitter). kafka-python doubles it from 50 ms up to 30 s by default, so an
# agent whose broker had been away a while went on up to 30 s after the broker was back.
RECONNECT_BACKOFF_MAX_MS = 2000


MAX_RAY_CPUS = 4096
"""Most CPUs a local Ray may be started with: more than any one host has. Ray itself refuses
more than 1e14 only once it starts, with a traceback (after the agent reached Kafka)."""


class JobAgentConfig(BaseModel):
    """What `headrace train agent` consumes and where it publishes."""

    model_config = ConfigDict(extra="forbid")

    bootstrap: str = Field(min_length=1, description="Kafka bootstrap servers.")
    repository: Path
    runs_dir: Path
    group_id: str = Field(default="headrace-training", pattern=r"^[A-Za-z0-9._-]+$")
    ray_cpus: int | None = Field(
        default=None,
        ge=1,
        le=MAX_RAY_CPUS,
        description="CPUs of a local Ray (ignored with RAY_ADDRESS).",
    )
    data_root: Path = Field(
        default=DEFAULT_DATA_ROOT, description="Data root of jobs that train on ingested shards."
    )
    data_dir: Path | None = Field(
        default=None, description="Folder of file-based datasets jobs may name (with data_root)."
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Prometheus /metrics port (0 = free, None = off)."
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address /metrics listens on (0.0.0.0 in a container, for Prometheus).",
    )
    broker_silence_s: WatchSeconds = Field(
        default=BROKER_SILENCE_S,
        description="Seconds without an answer from Kafka after which the agent logs that it "
        "has lost its broker and /metrics shows training_broker_reachable 0 "
        "(HEADRACE_BROKER_SILENCE_S).",
    )
    unassigned_warn_s: WatchSeconds = Field(
        default=UNASSIGNED_WARN_S,
        description="Seconds without a first assignment from the consumer group after which "
        "the agent warns that the group has not finished a rebalance, and again every this "
        "long (HEADRACE_UNASSIGNED_WARN_S).",
    )


@dataclass
class _Job:
    offset: int
    partition: int
    spec: TrainingJobSpec
    cancelled: threading.Event = field(default_factory=threading.Event)
    interrupted: threading.Event = field(default_factory=threading.Event)  # the agent stops
    thread: threading.Thread | None = None
    unreported: bool = False  # its last event never reached Kafka: the command stays open


class JobAgent:
    """Consumer loop + one job thread (see the module docstring)."""

    def __init__(
        self,
        config: JobAgentConfig,
        train: Callable[..., object],
        available_cpus: int | None,
        metrics: TrainingMetrics | None = None,
    ) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        self.config = config
        self.metrics = metrics
        self.producer = KafkaProducer(
            bootstrap_servers=config.bootstrap,
            acks="all",
            # Not idempotent: kafka-python 3's idempotent producer (its default) turns a broker
            # that forgot its producer id (a restarted embedded broker; producer-state expiry on
            # Kafka) into a fatal state in which every later send fails, so the job's events,
            # its final one included, were lost. A retry may now repeat an event; one request
            # in flight keeps it next to the first and the events in order.
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,
            linger_ms=0,
            delivery_timeout_ms=int(EVENT_DELIVERY_TIMEOUT_S * 1000),
            max_block_ms=int(EVENT_DELIVERY_TIMEOUT_S * 1000),
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        )
        self.consumer = KafkaConsumer(
            JOBS_TOPIC,
            bootstrap_servers=config.bootstrap,
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=300,
            max_poll_interval_ms=3_600_000,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        )
        self.broker_watch = BrokerWatch(config.bootstrap, "training agent", config.broker_silence_s)
        for client in (self.consumer, self.producer):
            watch_kafka_python(client, self.broker_watch)
        if metrics is not None:
            metrics.watch_broker(self.broker_watch)
        self.runner = JobRunner(
            JobRunnerConfig(
                repository=config.repository,
                runs_dir=config.runs_dir,
                available_cpus=available_cpus,
                data_root=config.data_root,
                data_dir=config.data_dir,
            ),
            train,  # type: ignore[arg-type]
            self.emit,
            self.announce,
        )
        self.pending: deque[_Job] = deque()
        self.running: _Job | None = None
        self.next_offsets: dict[int, int] = {}
        self.unfinished: dict[int, set[int]] = {}
        self.committed: dict[int, int] = {}

    # -- outputs ---------------------------------------------------------------------------

    def emit(self, event: TrainingEvent) -> None:
        # The one place metrics learn what happened; first, so that whoever reads the event
        # off the topic finds /metrics already updated.
        if self.metrics is not None:
            self.metrics.observe(event)
        self._deliver(EVENTS_TOPIC, event.job_id, event.model_dump_json().encode())
        log.info("%s", event.describe())

    def announce(self, update: ModelUpdate) -> None:
        self._deliver(UPDATES_TOPIC, update.model, update.model_dump_json().encode())

    def _deliver(self, topic: str, key: str, value: bytes) -> None:
        """Produce and wait for the acknowledgement, as long as the producer tries (its
        `delivery_timeout_ms`); a wait past `EVENT_WAIT_WARN_S` is logged once."""
        from kafka.errors import KafkaTimeoutError

        future = self.producer.send(topic, key=key.encode(), value=value)
        try:
            future.get(timeout=EVENT_WAIT_WARN_S)
            return
        except KafkaTimeoutError:
            if future.is_done:  # the producer gave up: not a wait of ours
                raise
        log.warning(
            "Kafka at %s has not acknowledged a record for %s (key %s) in %.0f s; "
            "waiting up to %.0f s for the broker (the job waits with it)",
            self.config.bootstrap, topic, key, EVENT_WAIT_WARN_S, EVENT_DELIVERY_TIMEOUT_S,
        )  # fmt: skip
        future.get(timeout=EVENT_DELIVERY_TIMEOUT_S)  # the producer's verdict comes first
        log.warning("Kafka at %s answers again (the record for %s is acknowledged)",
                    self.config.bootstrap, topic)  # fmt: skip

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event, on_ready: Callable[[], None] | None = None) -> None:
        """Poll, dispatch and commit until `stop` is set; the running job is cancelled on stop."""
        from kafka.errors import InconsistentGroupProtocolError, RetriableError

        ready = False
        check_until(stop, self.broker_watch)  # on its own thread: `poll` may wait for Kafka
        watch = AssignmentWatch(
            self.config.group_id, "agents", JOBS_TOPIC, self.config.unassigned_warn_s
        )
        try:
            while not stop.is_set():
                try:
                    batches = self.consumer.poll(timeout_ms=POLL_MS)
                except RetriableError as exc:  # the broker away: kafka-python 3 may raise
                    # its connection error out of `poll`; the broker watch reports the outage
                    log.debug("poll failed, polling again: %s", exc)
                    stop.wait(POLL_MS / 1000)  # not a busy loop when it fails at once
                    continue
                except InconsistentGroupProtocolError:
                    raise ConfigError(
                        f"consumer group {self.config.group_id!r} is already used by clients "
                        "of another kind (a stream worker's or data ingest's group?), whose "
                        "assignment protocol the broker will not mix with the agent's: give "
                        "the agent its own --group"
                    ) from None
                if not ready and not watch.check(bool(self.consumer.assignment())):
                    ready = True
                    if on_ready is not None:
                        on_ready()
                for tp, records in batches.items():
                    for record in records:
                        self._receive(tp.partition, record.offset, record.value)
                self._reap()
                self._start_next()
                self._commit()
        finally:
            if self.running is not None:
                self.running.interrupted.set()
                self.running.cancelled.set()
                if self.running.thread is not None:
                    self.running.thread.join(timeout=STOP_JOIN_S)
            self.consumer.close(autocommit=False)
            self._close_producer()

    def _close_producer(self) -> None:
        """Flush and close; events the broker does not take by then (it is away) are given up
        with a warning, not a traceback: their commands are not committed, so they run again."""
        from kafka.errors import KafkaError

        try:
            self.producer.flush(timeout=STOP_FLUSH_S)
            self.producer.close(timeout=STOP_FLUSH_S)
        except KafkaError as exc:
            log.warning(
                "events not acknowledged by Kafka at %s by the stop (%s); their commands stay "
                "uncommitted and are read again after a restart",
                self.config.bootstrap, exc,
            )  # fmt: skip

    def _receive(self, partition: int, offset: int, value: bytes | None) -> None:
        self.unfinished.setdefault(partition, set()).add(offset)
        self.next_offsets[partition] = offset + 1
        try:
            command = JobCommand.model_validate_json(value or b"")
        except ValidationError as exc:
            reason = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()
            )
            self.emit(TrainingEvent(job_id="unknown", event="rejected", reason=reason))
            self._finish(partition, offset)
            return
        if command.command == "cancel":
            self._cancel(command.job_id)
            self._finish(partition, offset)
            return
        spec = self.runner.validate(command.job_id, command.spec)
        if spec is None:
            self._finish(partition, offset)
            return
        self.pending.append(_Job(offset, partition, spec))

    def _cancel(self, job_id: str) -> None:
        if self.running is not None and self.running.spec.job_id == job_id:
            self.running.cancelled.set()
            return
        for job in list(self.pending):
            if job.spec.job_id == job_id:
                self.pending.remove(job)
                self.emit(TrainingEvent(job_id=job_id, event="cancelled", reason="before start"))
                self._finish(job.partition, job.offset)
                return
        log.warning("cancel for job %s, which is not queued or running here", job_id)

    def _start_next(self) -> None:
        if self.running is not None or not self.pending:
            return
        job = self.pending.popleft()
        job.thread = threading.Thread(
            target=self._execute,
            args=(job,),
            name=f"job-{job.spec.job_id}",
            daemon=True,
        )
        self.running = job
        job.thread.start()

    def _execute(self, job: _Job) -> None:
        """The job on its thread. The runner turns every outcome into an event; an event Kafka
        did not take (the broker away for longer than the producer tries) ends the job without
        its final event, and its command is left uncommitted so that it is not lost."""
        from kafka.errors import KafkaError

        try:
            self.runner.execute(job.spec, job.cancelled, job.interrupted)
        except KafkaError as exc:
            job.unreported = True
            log.error(
                "job %s ended without its final event: Kafka at %s did not take it (%s); its "
                "command stays uncommitted and runs again when the agent is started again "
                "(from its checkpoint, or reported from its saved report)",
                job.spec.job_id, self.config.bootstrap, exc,
            )  # fmt: skip

    def _reap(self) -> None:
        job = self.running
        if job is not None and job.thread is not None and not job.thread.is_alive():
            self.running = None
            if not job.unreported:
                self._finish(job.partition, job.offset)

    def _finish(self, partition: int, offset: int) -> None:
        self.unfinished.get(partition, set()).discard(offset)

    def _commit(self) -> None:
        from kafka import TopicPartition
        from kafka.errors import KafkaError, RetriableError
        from kafka.structs import OffsetAndMetadata

        offsets = {}
        for partition, next_offset in self.next_offsets.items():
            open_offsets = self.unfinished.get(partition)
            point = min(open_offsets) if open_offsets else next_offset
            if self.committed.get(partition) != point:
                offsets[TopicPartition(JOBS_TOPIC, partition)] = OffsetAndMetadata(point, "", -1)
                self.committed[partition] = point
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except RetriableError as exc:  # the broker away for longer than the commit waits
            for tp in offsets:  # committed again by a later turn of the loop
                self.committed.pop(tp.partition, None)
            log.warning(
                "could not commit the offsets of finished commands to Kafka at %s (%s); "
                "trying again (a job whose offset stays uncommitted is reported again from its "
                "saved report after a restart)",
                self.config.bootstrap, exc,
            )  # fmt: skip
        except KafkaError as exc:  # the partitions went to another agent: it reads them again
            log.warning("could not commit the offsets of finished commands (%s)", exc)
