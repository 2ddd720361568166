"""Prometheus counters of the stream worker, on the serving metrics' registry.

The inference metrics (latency, batch size, failures by reason) come from the
dataplane's `ServingMetrics`; these count what the stream itself sees.
"""

from __future__ import annotations

from prometheus_client import Counter

from serving.metrics import ServingMetrics


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

        self.ack_waits = Counter(
            "stream_ack_waits",
            "Batches whose ack waited for an earlier batch of the same partition to finish.",
            registry=registry,
        )

    def observe_batch(self, records: int, results: int, dlq_reasons: list[str]) -> None:
        self.messages_in.inc(records)
        if results:
            self.results.inc(results)
        for reason in dlq_reasons:
            self.dlq.labels(reason).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        return self.serving.serve(port, host)
