"""`headrace train submit|status|events|cancel|agent`: training jobs over Kafka, run on Ray."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import click

from headrace.commands.broker import answering_bootstrap
from headrace.commands.options import (
    FiniteFloatRange,
    build_config,
    refuse_metrics_host_without_port,
)
from headrace.errors import ConfigError, HeadraceError
from headrace.settings import load_settings

_bootstrap_option = click.option(
    "--bootstrap",
    help="Kafka bootstrap servers (default HEADRACE_KAFKA_BOOTSTRAP, else the embedded broker).",
)


def _reachable(bootstrap_flag: str | None) -> str:
    from streams.topics import create_topics

    bootstrap = answering_bootstrap(bootstrap_flag)
    create_topics(bootstrap)
    return bootstrap


@click.command("submit")
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_bootstrap_option
@click.option("--job-id", help="Job id (default: the spec's, else a new one).")
@click.option(
    "--cpus",
    type=click.IntRange(min=1),
    help="CPUs the Ray cluster offers, to check `workers` (default: this host's).",
)
def submit(spec_file: Path, bootstrap: str | None, job_id: str | None, cpus: int | None) -> None:
    """Check SPEC_FILE (YAML or JSON) and put it on the training-jobs topic; prints the job id."""
    from streams.job_client import submit_job
    from training.documents import read_document
    from training.job_spec import parse_job_spec, spec_to_json

    document = read_document(spec_file, f"job spec {spec_file}")
    spec = parse_job_spec(document, available_cpus=cpus or os.cpu_count(), source=str(spec_file))
    if job_id is not None:  # the spec as submitted: without the fields only the agent sets
        submitted = json.loads(spec_to_json(spec))
        spec = parse_job_spec({**submitted, "job_id": job_id}, source="--job-id")
    click.echo(submit_job(_reachable(bootstrap), spec))


@click.command("cancel")
@click.argument("job_id")
@_bootstrap_option
def cancel(job_id: str, bootstrap: str | None) -> None:
    """Ask the agent to cancel JOB_ID (queued or running)."""
    from streams.job_client import cancel_job, read_events, was_submitted
    from streams.job_messages import JOBS_TOPIC, TERMINAL_EVENTS

    address = _reachable(bootstrap)
    history = list(read_events(address, job_id, idle_s=1.0))
    if history and history[-1].event in TERMINAL_EVENTS:
        click.echo(f"job {job_id} already ended ({history[-1].event}); nothing to cancel")
        return
    if not history and not was_submitted(address, job_id):
        raise HeadraceError(f"no job {job_id!r} was submitted on {JOBS_TOPIC}; nothing to cancel")
    cancel_job(address, job_id)
    click.echo(f"cancel requested for {job_id}")


@click.command("events")
@click.option("--job", "job_id", help="Only this job's events.")
@click.option("--follow", is_flag=True, help="Keep printing new events (Ctrl-C to stop).")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@_bootstrap_option
def events(job_id: str | None, follow: bool, as_json: bool, bootstrap: str | None) -> None:
    """Print training events (epochs, retries, outcomes) from the training-events topic.

    With none to print, says why (exit 2), or with --follow says so on stderr and waits.
    """
    from collections import Counter

    from streams.job_client import new_events, no_events_reason, read_events

    address = _reachable(bootstrap)
    shown: Counter[str] = Counter()
    for event in read_events(address, job_id):
        click.echo(event.model_dump_json() if as_json else event.describe())
        shown[event.job_id] += 1
    if not shown:
        reason = no_events_reason(address, job_id)
        if not follow:
            raise HeadraceError(reason)
        click.echo(f"{reason} (waiting for them; Ctrl-C to stop)", err=True)
    if follow:
        for event in new_events(address, job_id, shown):
            click.echo(event.model_dump_json() if as_json else event.describe())


@click.command("status")
@click.argument("job_id")
@click.option("--wait", "wait_s", type=FiniteFloatRange(min=0), default=0.0, help="Wait up to "
              "this many seconds for the job to end.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the latest event as JSON.")
@_bootstrap_option
def status(job_id: str, wait_s: float, as_json: bool, bootstrap: str | None) -> None:
    """Show JOB_ID's latest state; exits 1 if it failed, was rejected or cancelled, and 2 if
    it had not ended after --wait seconds."""
    from streams.job_client import read_events
    from streams.job_messages import TERMINAL_EVENTS

    address = _reachable(bootstrap)
    deadline = time.monotonic() + wait_s
    while True:
        history = list(read_events(address, job_id, idle_s=1.0))
        latest = history[-1] if history else None
        if latest is not None and latest.event in TERMINAL_EVENTS:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(1.0, left))  # the topic has no push: look again, not past the deadline
    if latest is None:
        raise HeadraceError(f"no events for job {job_id!r}; is `headrace train agent` running?")
    click.echo(latest.model_dump_json() if as_json else latest.describe())
    if latest.event in {"failed", "rejected", "cancelled"}:
        raise SystemExit(1)
    if wait_s > 0 and latest.event not in TERMINAL_EVENTS:  # asked to wait for its end
        raise HeadraceError(
            f"job {job_id!r} had not ended after --wait {wait_s:g} s (latest: {latest.event}); "
            f"wait longer, or follow it with `headrace train events --job {job_id} --follow`"
        )


@click.command("agent")
@_bootstrap_option
@click.option("--repository", type=click.Path(path_type=Path), help="Model repository folder.")
@click.option("--runs-dir", type=click.Path(path_type=Path), help="Run folders, one per job.")
@click.option("--group", default="headrace-training", show_default=True, help="Consumer group.")
@click.option(
    "--ray-cpus",
    type=click.IntRange(1, 4096),  # JobAgentConfig's bound, checked before Kafka is reached
    help="CPUs of a local Ray (default all; RAY_ADDRESS wins).",
)
@click.option("--metrics-port", type=int, help="Prometheus /metrics port (0 = free; unset = off).")
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address /metrics listens on (0.0.0.0 in a container).",
)
@click.option(
    "--loglevel",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def agent(
    bootstrap: str | None,
    repository: Path | None,
    runs_dir: Path | None,
    group: str,
    ray_cpus: int | None,
    metrics_port: int | None,
    metrics_host: str,
    loglevel: str,
) -> None:
    """Run training jobs from the training-jobs topic on Ray until SIGTERM or Ctrl-C.

    Prints `training agent ready ... metrics=PORT` once it consumes; progress goes to
    training-events (and to /metrics with --metrics-port) and new model versions are
    announced on model-updates.
    """
    from streams import log_flood
    from streams.job_agent import JobAgent, JobAgentConfig
    from streams.job_metrics import TrainingMetrics
    from training.config import folder_problem
    from training.ray_jobs import connect_ray, run_on_ray

    refuse_metrics_host_without_port(metrics_port)
    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    log_flood.install(logging.getLogger().handlers, log_flood.RepeatFilter())  # kafka's repeats
    settings = load_settings()
    repository = repository or settings.model_repository
    runs_dir = runs_dir or settings.runs_dir
    for name, flag, folder in (  # else it said ready and every job was rejected for it
        ("repository", "--repository", repository),
        ("runs_dir", "--runs-dir", runs_dir),
    ):
        if (problem := folder_problem(folder, name, flag)) is not None:
            raise ConfigError(problem)
    config = build_config(
        JobAgentConfig,
        bootstrap=_reachable(bootstrap),
        repository=repository,
        runs_dir=runs_dir,
        group_id=group,
        ray_cpus=ray_cpus,
        data_root=settings.data_root,  # jobs with `data_source: {kind: shards}` read it
        data_dir=settings.data_dir,  # with data_root, the only folders a spec may name
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        broker_silence_s=settings.broker_silence_s,
        unassigned_warn_s=settings.unassigned_warn_s,
    )
    metrics, served_port = None, None
    if config.metrics_port is not None:  # before Ray's slow start, so a taken port fails fast
        metrics = TrainingMetrics()
        try:
            served_port = metrics.serve(config.metrics_port, config.metrics_host)
        except OSError as exc:
            raise HeadraceError(
                f"cannot serve /metrics on {config.metrics_host}:{config.metrics_port}: "
                f"{exc.strerror}; pick another --metrics-port (0 = any free port)"
            ) from None
    cpus = connect_ray(config.ray_cpus)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    job_agent = JobAgent(config, run_on_ray, available_cpus=cpus, metrics=metrics)

    def ready() -> None:
        click.echo(
            f"training agent ready group={config.group_id} bootstrap={config.bootstrap} "
            f"ray_cpus={cpus} metrics={served_port}"
        )

    job_agent.run(stop, on_ready=ready)
