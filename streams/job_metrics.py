"""Prometheus metrics of the training-job agent, derived from the events it emits.

Every step of a job is a `TrainingEvent` on `training-events`; `TrainingMetrics.observe`
turns the same events into series, so the dashboard and the topic cannot disagree. Series
are labelled by model name (a set the specs choose, small in practice), never by job id: job
ids are unbounded. The one exception, `training_running_job_info{job_id,model}`, names only
the jobs running now and drops each when it ends. Names carry no app prefix and use base
units, as `serving.metrics` does; the privacy budget of a published version is served by
`headrace serve` (`model_dp_epsilon`), not repeated here.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streams.broker_metrics import BrokerCollector
from streams.broker_watch import BrokerWatch
from streams.job_messages import TrainingEvent

OUTCOMES = ("succeeded", "failed", "cancelled", "rejected")
UNKNOWN_MODEL = "unknown"  # a job refused before its spec named a model
EPOCH_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class TrainingMetrics:
    """Job outcomes, queue and running counts, and per-model progress of the latest epoch."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        model = ["model"]
        self.jobs = Counter(
            "training_jobs", "Jobs that ended, by outcome.", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:  # every outcome has a series from the start, at 0
            self.jobs.labels(outcome)
        self.retries = Counter(
            "training_job_retries", "Job attempts retried after a worker crash.", model, registry=r
        )
        self.queued = Gauge(
            "training_jobs_queued", "Jobs accepted and waiting for their turn.", registry=r
        )
        self.running = Gauge("training_jobs_running", "Jobs training now.", registry=r)
        self.running_info = Gauge(
            "training_running_job_info",
            "1 for each job training now (the series ends with the job).",
            ["job_id", "model"],
            registry=r,
        )
        self.epoch = Gauge(
            "training_epoch", "Epochs finished by the model's latest job.", model, registry=r
        )
        self.epochs = Gauge(
            "training_epochs", "Epochs the model's latest job asked for.", model, registry=r
        )
        self.train_loss = Gauge(
            "training_train_loss", "Training loss of the latest epoch.", model, registry=r
        )
        self.val_loss = Gauge(
            "training_val_loss", "Validation loss of the latest epoch.", model, registry=r
        )
        self.val_accuracy = Gauge(
            "training_val_accuracy",
            "Validation accuracy (0..1) of the latest epoch.",
            model,
            registry=r,
        )
        self.samples_per_second = Gauge(
            "training_samples_per_second",
            "Training samples per second in the latest epoch.",
            model,
            registry=r,
        )
        self.epoch_duration = Histogram(
            "training_epoch_duration_seconds",
            "Wall time of one epoch (training and validation).",
            model,
            buckets=EPOCH_BUCKETS_S,
            registry=r,
        )
        self.communicated = Counter(
            "training_communicated_bytes",
            "Bytes the workers of distributed jobs sent to each other.",
            model,
            registry=r,
        )
        self.test_accuracy = Gauge(
            "training_test_accuracy",
            "Test accuracy (0..1) of the model's latest successful job.",
            model,
            registry=r,
        )
        self.published_version = Gauge(
            "training_published_version",
            "Version the model's latest successful job published.",
            model,
            registry=r,
        )
        self._lock = threading.Lock()  # events come from the consumer loop and the job thread
        self._models: dict[str, str] = {}  # job id -> model, from `accepted` to the job's end
        self._queued: set[str] = set()
        self._running: dict[str, str] = {}  # job id -> the model of its info series

    def observe(self, event: TrainingEvent) -> None:
        """Update the series from one emitted event."""
        with self._lock:
            if event.event == "accepted":
                self._models[event.job_id] = event.model or UNKNOWN_MODEL
                self._queued.add(event.job_id)
            model = self._models.get(event.job_id) or event.model or UNKNOWN_MODEL
            if event.event == "started":
                self._queued.discard(event.job_id)
                if event.job_id not in self._running:
                    self._running[event.job_id] = model
                    self.running_info.labels(event.job_id, model).set(1)
                if event.attempt == 1:
                    self.epoch.labels(model).set(0)
            elif event.event == "epoch":
                self._observe_epoch(event, model)
            elif event.event == "retrying":
                self.retries.labels(model).inc()
            elif event.event in OUTCOMES:
                self._end(event, model)
            self.queued.set(len(self._queued))
            self.running.set(len(self._running))

    def _observe_epoch(self, event: TrainingEvent, model: str) -> None:
        if event.epoch is not None:
            self.epoch.labels(model).set(event.epoch)
        if event.epochs is not None:
            self.epochs.labels(model).set(event.epochs)
        for gauge, value in (
            (self.train_loss, event.train_loss),
            (self.val_loss, event.val_loss),
            (self.val_accuracy, event.val_accuracy),
            (self.samples_per_second, event.samples_per_s),
        ):
            if value is not None:
                gauge.labels(model).set(value)
        if event.epoch_s is not None:
            self.epoch_duration.labels(model).observe(event.epoch_s)
        if event.bytes_communicated is not None:
            self.communicated.labels(model).inc(event.bytes_communicated)

    def _end(self, event: TrainingEvent, model: str) -> None:
        self.jobs.labels(event.event).inc()
        if event.job_id in self._running:
            self.running_info.remove(event.job_id, self._running.pop(event.job_id))
        self._queued.discard(event.job_id)
        self._models.pop(event.job_id, None)
        if event.event == "succeeded":
            if event.test_accuracy is not None:
                self.test_accuracy.labels(model).set(event.test_accuracy)
            if event.version is not None:
                self.published_version.labels(model).set(event.version)

    def watch_broker(self, watch: BrokerWatch) -> None:
        """Expose `training_broker_reachable`, `training_broker_unanswered_seconds` and
        `training_broker_outages_total`, read from `watch` at scrape time."""
        self.registry.register(BrokerCollector(watch, "training"))

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics over HTTP; returns the bound port (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
