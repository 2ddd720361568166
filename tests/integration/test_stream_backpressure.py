"""Backpressure: a saturated stream worker stops fetching instead of buffering without bound.

The worker runs one record per batch with one batch in flight and a 32-record buffer, and
3,000 requests arrive at once, far faster than it answers them. Faust then removes the
partitions from the fetcher (counted in `stream_backpressure_pauses_total`), resumes them as
the buffer drains, and every request still gets its outcome.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from kafka_fixtures import kafka_cluster
from server_fixtures import wait_until
from stream_fixtures import (
    OutcomeTally,
    RequestTemplate,
    produce_ids,
    producer,
    publish_lenet,
    running_worker,
)

REQUESTS = 3000
BUFFER = 32


def test_a_saturated_worker_pauses_fetching_and_still_answers_everything(
    tmp_path: Path,
) -> None:
    repository, _ = publish_lenet(tmp_path)
    ids = [f"bp-{uuid.uuid4().hex[:8]}-{n}" for n in range(REQUESTS)]
    slow = ["--max-batch", "1", "--max-buffered", str(BUFFER)]
    with kafka_cluster() as bootstrap:
        group = f"bp-{uuid.uuid4().hex[:8]}"
        with running_worker(
            bootstrap, repository, group, tmp_path / "w.log", concurrency=1, args=slow
        ) as worker:
            send = producer(bootstrap, linger_ms=20)
            try:
                produce_ids(send, ids, RequestTemplate())
            finally:
                send.close()
            paused_while_busy = worker.scrape().value("stream_paused_partitions")
            tally = OutcomeTally(bootstrap, set(ids))
            try:
                tally.wait_for(REQUESTS, "an outcome for every request")
            finally:
                tally.close()
            metrics = worker.scrape()
            pauses = metrics.value("stream_backpressure_pauses_total", topic="inference-requests")
            answered = metrics.value("stream_messages_in_total")
            assert pauses >= 1, f"the worker never paused fetching:\n{metrics.text[-2000:]}"
            assert tally.missing() == set()
            assert answered >= REQUESTS
            # Once the backlog is gone every partition is fetched again.
            wait_until(
                lambda: worker.scrape().value("stream_paused_partitions") == 0,
                timeout_s=30,
                what="paused partitions resumed",
            )
            print(
                f"pauses {pauses:g}, partitions paused right after producing "
                f"{paused_while_busy:g}, duplicates {tally.duplicates}"
            )
