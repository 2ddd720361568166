"""Prometheus series of a `streams.broker_watch.BrokerWatch`, read at scrape time.

The stream and ingestion workers expose them as `stream_broker_*`, the training agent as
`training_broker_*`: `<prefix>_broker_reachable`, `<prefix>_broker_unanswered_seconds` and
`<prefix>_broker_outages_total`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.broker_watch import BrokerWatch


class BrokerCollector(Collector):
    """Whether Kafka answers the process `watch` follows, as `<prefix>_broker_*` series."""

    def __init__(self, watch: BrokerWatch, prefix: str) -> None:
        self.watch, self.prefix = watch, prefix

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        silence, process = f"{self.watch.silence_s:g}", self.watch.process
        yield GaugeMetricFamily(
            f"{self.prefix}_broker_reachable",
            f"1 while Kafka answers the {process}'s requests; 0 once none was answered for "
            f"{silence} s, until the next answer.",
            value=1 if self.watch.reachable else 0,
        )
        yield GaugeMetricFamily(
            f"{self.prefix}_broker_unanswered_seconds",
            f"How long the {process}'s oldest request to Kafka not answered since the last "
            "answer has waited (0 while Kafka answers).",
            value=self.watch.unanswered_s(),
        )
        yield CounterMetricFamily(
            f"{self.prefix}_broker_outages",
            f"Times Kafka left the {process}'s requests unanswered for {silence} s.",
            value=self.watch.outages,
        )
