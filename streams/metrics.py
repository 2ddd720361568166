"""Prometheus counters of the stream worker, on the serving metrics' registry.

The inference metrics (latency, batch size, failures by reason) come from the
dataplane's `ServingMetrics`; these count what the stream itself sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.histograms import observe_all
from serving.metrics import ServingMetrics
from streams.broker_metrics import BrokerCollector
from streams.broker_watch import BrokerWatch


class _LagCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "stream_consumer_lag",
            "Records in the partition not yet taken by this worker.",
            labels=["topic", "partition"],
        )
        try:
            rows = list(self.source())
        except Exception:  # the consumer is starting or stopping: report nothing this scrape
            rows = []
        for topic, partition, lag in rows:
            gauge.add_metric([topic, str(partition)], lag)
        yield gauge


E2E_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ACK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class StreamMetrics:
    """Records in, results out and DLQ records by reason."""

    def __init__(self, serving: ServingMetrics) -> None:
        self.serving = serving
        registry = serving.registry
        self.messages_in = Counter(
            "stream_messages_in", "Request records taken off the requests topic.", registry=registry
        )
        self.results = Counter(
            "stream_results", "Result records produced and acknowledged.", registry=registry
        )
        self.dlq = Counter(
            "stream_dlq",
            "DLQ records produced and acknowledged, by reason.",
            ["reason"],
            registry=registry,
        )

        self.end_to_end = Histogram(
            "stream_end_to_end_latency_seconds",
            "From the request's creation (its created_at, else its record timestamp) to its "
            "result being acknowledged by the broker.",
            buckets=E2E_BUCKETS_S,
            registry=registry,
        )
        self.backpressure_pauses = Counter(
            "stream_backpressure_pauses",
            "Times a partition's fetching was paused because the worker's buffer of records not "
            "yet batched was full (backpressure; it resumes once the buffer has drained).",
            ["topic"],
            registry=registry,
        )
        self.outcome_acks = Histogram(
            "stream_outcome_ack_seconds",
            "Per batch, from handing its outcomes to the producer until the broker acknowledged "
            "every one of them (retries included); the batch's records are acked after that.",
            buckets=ACK_BUCKETS_S,
            registry=registry,
        )
        self.ack_waits = Counter(
            "stream_ack_waits",
            "Batches whose ack waited for an earlier batch of the same partition to finish.",
            registry=registry,
        )

    def observe_batch(
        self,
        records: int,
        results: int,
        dlq_reasons: list[str],
        latencies_s: Sequence[float] = (),
    ) -> None:
        self.messages_in.inc(records)
        observe_all(self.end_to_end, latencies_s)
        if results:
            self.results.inc(results)
        for reason in dlq_reasons:
            self.dlq.labels(reason).inc()

    def watch_lag(self, source: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        """Expose `stream_consumer_lag{topic,partition}` read from `source` at scrape time."""
        self.serving.registry.register(_LagCollector(source))

    def watch_paused(self, source: Callable[[], int]) -> None:
        """Expose `stream_paused_partitions`, read from `source` at scrape time."""
        paused = Gauge(
            "stream_paused_partitions",
            "Partitions whose fetching is paused by backpressure right now.",
            registry=self.serving.registry,
        )
        paused.set_function(source)

    def watch_broker(self, watch: BrokerWatch) -> None:
        """Expose `stream_broker_reachable`, `stream_broker_unanswered_seconds` and
        `stream_broker_outages_total`, read from `watch` at scrape time."""
        self.serving.registry.register(BrokerCollector(watch, "stream"))

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        return self.serving.serve(port, host)
