"""The training agent's Prometheus series follow the events it emits: outcomes counted once,
queue and running counts, per-model progress, and no series left behind per job id."""

from __future__ import annotations

from prometheus_client import generate_latest

from streams.job_messages import TrainingEvent
from streams.job_metrics import TrainingMetrics


def value(metrics: TrainingMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def epoch(job_id: str, n: int, attempt: int = 1) -> TrainingEvent:
    return TrainingEvent(
        job_id=job_id, event="epoch", attempt=attempt, epoch=n, epochs=3, train_loss=1.0 / n,
        val_loss=1.5 / n, val_accuracy=0.5 + 0.1 * n, samples_per_s=1000.0 * n, epoch_s=2.0,
    )  # fmt: skip


def test_a_job_life_becomes_series() -> None:
    metrics = TrainingMetrics()
    assert value(metrics, "training_jobs_total", outcome="failed") == 0.0
    for event in (
        TrainingEvent(job_id="a", event="accepted", model="digits"),
        TrainingEvent(job_id="b", event="accepted", model="other"),
        TrainingEvent(job_id="a", event="started"),
    ):
        metrics.observe(event)
    assert value(metrics, "training_jobs_queued") == 1.0
    assert value(metrics, "training_jobs_running") == 1.0
    assert value(metrics, "training_running_job_info", job_id="a", model="digits") == 1.0
    assert value(metrics, "training_epoch", model="digits") == 0.0

    metrics.observe(epoch("a", 1))
    metrics.observe(TrainingEvent(job_id="a", event="retrying", reason="worker died"))
    metrics.observe(TrainingEvent(job_id="a", event="started", attempt=2))
    metrics.observe(epoch("a", 2, attempt=2))
    assert value(metrics, "training_epoch", model="digits") == 2.0
    assert value(metrics, "training_epochs", model="digits") == 3.0
    assert value(metrics, "training_val_accuracy", model="digits") == 0.7
    assert value(metrics, "training_train_loss", model="digits") == 0.5
    assert value(metrics, "training_samples_per_second", model="digits") == 2000.0
    assert value(metrics, "training_epoch_duration_seconds_count", model="digits") == 2.0
    assert value(metrics, "training_epoch_duration_seconds_sum", model="digits") == 4.0
    assert value(metrics, "training_job_retries_total", model="digits") == 1.0
    assert value(metrics, "training_jobs_running") == 1.0  # a retry is the same running job

    metrics.observe(
        TrainingEvent(job_id="a", event="succeeded", model="digits", version=4, test_accuracy=0.9)
    )
    metrics.observe(TrainingEvent(job_id="b", event="cancelled", reason="before start"))
    metrics.observe(TrainingEvent(job_id="unknown", event="rejected", reason="not JSON"))
    for outcome in ("succeeded", "cancelled", "rejected"):
        assert value(metrics, "training_jobs_total", outcome=outcome) == 1.0, outcome
    assert value(metrics, "training_jobs_total", outcome="failed") == 0.0
    assert value(metrics, "training_jobs_queued") == 0.0
    assert value(metrics, "training_jobs_running") == 0.0
    assert value(metrics, "training_published_version", model="digits") == 4.0
    assert value(metrics, "training_test_accuracy", model="digits") == 0.9
    page = generate_latest(metrics.registry).decode()
    assert 'job_id="a"' not in page  # the running-job series ended with the job
    assert "training_val_accuracy{" in page


def test_a_failed_job_started_before_accepted_events_were_seen_is_counted() -> None:
    """An agent emits `accepted` before every start, but the series must not break if a
    model is unknown: the job is labelled `unknown` and its info series still ends."""
    metrics = TrainingMetrics()
    metrics.observe(TrainingEvent(job_id="x", event="started"))
    assert value(metrics, "training_running_job_info", job_id="x", model="unknown") == 1.0
    metrics.observe(TrainingEvent(job_id="x", event="failed", model="late", reason="boom"))
    assert value(metrics, "training_jobs_total", outcome="failed") == 1.0
    assert value(metrics, "training_running_job_info", job_id="x", model="unknown") is None
    assert value(metrics, "training_jobs_running") == 0.0
