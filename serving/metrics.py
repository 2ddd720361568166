"""Prometheus metrics of the serving path, in base units with model/version labels.

Each server owns a `CollectorRegistry`, so several servers (or tests) can live
in one process. Queue depth and instance counts are read from the live state
at scrape time rather than copied on every request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from headrace.errors import ConfigError
from serving.histograms import HistogramTally
from serving.types import Timings

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNKNOWN_MODEL = "unknown"  # label for requests naming a model that does not exist

# (model, version, queue depth, in-flight requests, instances) for each loaded version
StateSource = Callable[[], Iterable[tuple[str, str, int, int, int]]]
# (model, version, dp epsilon, dp delta) for each loaded version trained with differential privacy
PrivacySource = Callable[[], Iterable[tuple[str, str, float, float]]]


class _LiveState(Collector):
    """Gauges read from the model manager at scrape time."""

    def __init__(self, source: StateSource) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model", "version"]
        depth = GaugeMetricFamily(
            "inference_queue_depth", "Requests waiting in the batcher queue.", labels=labels
        )
        pending = GaugeMetricFamily(
            "inference_in_flight_requests", "Requests dispatched and not finished.", labels=labels
        )
        instances = GaugeMetricFamily(
            "inference_instances", "Model instances (ONNX Runtime sessions).", labels=labels
        )
        for model, version, queued, in_flight, count in self.source():
            depth.add_metric([model, version], queued)
            pending.add_metric([model, version], in_flight)
            instances.add_metric([model, version], count)
        yield depth
        yield pending
        yield instances


class _PrivacyBudget(Collector):
    """The privacy budget each loaded version was trained with, read at scrape time, so a
    version's series appear when it loads and disappear when it is unloaded."""

    def __init__(self, source: PrivacySource) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model", "version"]
        epsilon = GaugeMetricFamily(
            "model_dp_epsilon",
            "Differential-privacy epsilon spent training the loaded version.",
            labels=labels,
        )
        delta = GaugeMetricFamily(
            "model_dp_delta",
            "Differential-privacy delta of the loaded version's epsilon.",
            labels=labels,
        )
        for model, version, eps, dlt in self.source():
            epsilon.add_metric([model, version], eps)
            delta.add_metric([model, version], dlt)
        yield epsilon
        yield delta


class _SuccessChildren(NamedTuple):
    """The labelled series one successful request updates, for one model version."""

    success: Counter
    inferences: Counter
    request_duration: Histogram
    queue_duration: Histogram
    compute_duration: Histogram
    batch_size: Histogram


class _PendingSuccess:
    """Successful requests of one model version counted since the last scrape."""

    __slots__ = ("requests", "rows", "request_duration", "queue_duration", "compute_duration",
                 "batch_size")  # fmt: skip

    def __init__(self, children: _SuccessChildren) -> None:
        self.requests = 0
        self.rows = 0
        self.request_duration = HistogramTally(children.request_duration)
        self.queue_duration = HistogramTally(children.queue_duration)
        self.compute_duration = HistogramTally(children.compute_duration)
        self.batch_size = HistogramTally(children.batch_size)

    def add_to(self, children: _SuccessChildren) -> None:
        children.success.inc(self.requests)
        children.inferences.inc(self.rows)
        self.request_duration.add_to(children.request_duration)
        self.queue_duration.add_to(children.queue_duration)
        self.compute_duration.add_to(children.compute_duration)
        self.batch_size.add_to(children.batch_size)


class _ScrapeRegistry(CollectorRegistry):
    """A registry that runs a hook before every collection (every scrape and every read
    of a sample), so that counts kept outside it are in what it shows."""

    def __init__(self, before_collect: Callable[[], None]) -> None:
        super().__init__()
        self._before_collect = before_collect

    def collect(self) -> Iterator[Metric]:
        self._before_collect()
        yield from super().collect()


class ServingMetrics:
    """The counters and histograms the dataplane and autoscaler update."""

    def __init__(
        self, state: StateSource | None = None, privacy: PrivacySource | None = None
    ) -> None:
        self._success_children: dict[tuple[str, str], _SuccessChildren] = {}
        # A request's success is counted here under one lock and moved into the labelled
        # series at scrape time: updated per request, the six series cost a lock per
        # counter, bucket and sum, several percent of LeNet-5's requests/s in the server.
        self._pending: dict[tuple[str, str], _PendingSuccess] = {}
        self._pending_lock = threading.Lock()
        self._adding_lock = threading.Lock()  # one scrape adds at a time; see add_pending
        self.registry: CollectorRegistry = _ScrapeRegistry(self.add_pending)
        labels = ["model", "version"]
        r = self.registry
        self.success = Counter(
            "inference_request_success", "Successful inference requests.", labels, registry=r
        )
        self.failure = Counter(
            "inference_request_failure",
            "Failed inference requests by reason.",
            [*labels, "reason"],
            registry=r,
        )
        self.inferences = Counter(
            "inference_count", "Samples (batch rows) inferred.", labels, registry=r
        )
        self.executions = Counter(
            "inference_exec_count", "Batches executed by the model.", labels, registry=r
        )
        self.request_duration = Histogram(
            "inference_request_duration_seconds",
            "Time from request arrival to response, in the server.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_duration = Histogram(
            "inference_queue_duration_seconds",
            "Time a request waited in the batcher queue.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.compute_duration = Histogram(
            "inference_compute_duration_seconds",
            "Time the model spent on the batch holding a request.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Rows in the executed batch holding a request.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.scaling = Counter(
            "autoscaler_decisions",
            "Instance count changes made by the autoscaler.",
            ["model", "version", "direction"],
            registry=r,
        )
        self.load_failures = Counter(
            "model_load_failures",
            "Model versions refused or failed at load, by reason (integrity_check_failed, "
            "unsafe_model, model_load_failed, repository_error for an invalid config.json, "
            "interface_mismatch for a model.onnx the config does not describe, "
            "version_removed for a version whose folder or files were deleted before its load "
            "finished); counted once per change of the files.",
            [*labels, "reason"],
            registry=r,
        )
        if state is not None:
            r.register(_LiveState(state))
        if privacy is not None:
            r.register(_PrivacyBudget(privacy))

    def observe_success(
        self,
        model: str,
        version: str,
        rows: int,
        timings: Timings,
        total_s: float,
        requests: int = 1,
    ) -> None:
        """`requests` successful requests holding `rows` rows in all, all with these timings
        (the requests of one merged batcher submit share them)."""
        key = (model, version)
        with self._pending_lock:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _PendingSuccess(self._children(key))
            pending.requests += requests
            pending.rows += rows
            pending.request_duration.observe(total_s, requests)
            pending.queue_duration.observe(timings.queue_s, requests)
            pending.compute_duration.observe(timings.compute_s, requests)
            pending.batch_size.observe(timings.batch_size, requests)

    def add_pending(self) -> None:
        """Move the successes counted since the last call into the labelled series (the
        registry calls this before every collection). A second scrape meanwhile waits for
        the first one's counts to be in, so that neither shows half of them."""
        with self._adding_lock:
            with self._pending_lock:
                pending, self._pending = self._pending, {}
            for key, counted in pending.items():
                counted.add_to(self._children(key))

    def _children(self, key: tuple[str, str]) -> _SuccessChildren:
        children = self._success_children.get(key)
        if children is None:  # `labels()` costs a lock and a dict lookup: once per version
            model, version = key
            children = self._success_children[key] = _SuccessChildren(
                self.success.labels(model, version),
                self.inferences.labels(model, version),
                self.request_duration.labels(model, version),
                self.queue_duration.labels(model, version),
                self.compute_duration.labels(model, version),
                self.batch_size.labels(model, version),
            )
        return children

    def observe_failure(self, model: str, version: str, reason: str) -> None:
        self.failure.labels(model, version, reason).inc()

    def observe_execution(self, model: str, version: int, rows: int) -> None:
        """One batch executed by the model (called from the executing thread)."""
        self.executions.labels(model, str(version)).inc()

    def observe_load_failure(self, model: str, version: int, reason: str) -> None:
        """A version was refused or failed to load (called from a loading thread)."""
        self.load_failures.labels(model, str(version), reason).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics over HTTP; returns the bound port (port 0 picks a free one)."""
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick another "
                "--metrics-port (0 picks a free one)"
            ) from None
        return int(server.server_port)
