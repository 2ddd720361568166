"""A tuning job over Kafka: spec on training-jobs -> NNI experiment in the agent -> best model.

One embedded broker and one `headrace train agent`; the job (`kind: tune`, two
one-epoch trials on digits) reports `started` with the web UI address (which
answers while the job runs), one `trial` event per trial, then `succeeded` with
the published version; the version's lineage names the job and the best trial,
and `model-updates` announces it. Every process is stopped by pid at the end,
and none of the experiment's processes (node manager, tuner, trials) outlives it.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.request
from pathlib import Path

import psutil
from agent_fixtures import running_agent

from serving.repository import ModelRepository
from streams.broker import EmbeddedBroker
from streams.job_client import read_events, submit_job
from streams.job_messages import TERMINAL_EVENTS, UPDATES_TOPIC, ModelUpdate, TrainingEvent
from streams.results import consume
from streams.topics import create_topics
from training.job_spec import parse_job_spec

SPEC = """\
kind: tune
model: lenet5
dataset: digits
epochs: 1
name: tuned-digits
tune:
  tuner: Random
  trials: 2
  concurrency: 2
  search_space:
    learning_rate: {_type: loguniform, _value: [0.001, 0.01]}
    dropout: {_type: uniform, _value: [0.0, 0.3]}
"""


def _events(bootstrap: str, job_id: str, until: set[str], timeout_s: float) -> list[TrainingEvent]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        history = list(read_events(bootstrap, job_id, idle_s=0.5))
        if history and history[-1].event in until | TERMINAL_EVENTS:
            return history
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout_s:g} s")


def _alive(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


def test_a_tuning_job_reports_each_trial_and_publishes_the_best(tmp_path: Path) -> None:
    repository, runs_dir = tmp_path / "repo", tmp_path / "runs"
    seen: list[psutil.Process] = []
    try:
        with contextlib.ExitStack() as exits:
            broker = exits.enter_context(EmbeddedBroker())
            create_topics(broker.bootstrap)
            agent = exits.enter_context(
                running_agent(
                    broker.bootstrap, repository, runs_dir, f"tune-{os.getpid()}",
                    tmp_path / "agent.log",
                )
            )  # fmt: skip
            job_id = submit_job(broker.bootstrap, parse_job_spec(SPEC, available_cpus=2))
            history = _events(broker.bootstrap, job_id, {"started"}, 120)
            started = history[-1]
            assert started.event == "started", agent.log_tail()
            assert started.web_ui and started.experiment_id and started.trials == 2
            seen.extend(_experiment_processes(agent.process.pid))
            assert _http_get(started.web_ui)[0] == 200

            history = _events(broker.bootstrap, job_id, {"succeeded"}, 240)
            outcome = history[-1]
            assert outcome.event == "succeeded", f"{outcome.describe()}\n{agent.log_tail()}"
            trials = [e for e in history if e.event == "trial"]
            assert [e.trial_number for e in trials] == [1, 2]
            assert all(e.trial_status == "SUCCEEDED" and e.val_loss for e in trials)
            best = min(trials, key=lambda e: e.val_loss or float("inf"))
            assert outcome.trial_id == best.trial_id and outcome.version == 1
            assert outcome.hyper_parameters == best.hyper_parameters
            assert set(best.hyper_parameters or {}) == {"learning_rate", "dropout"}

            metadata = ModelRepository(repository).get("tuned-digits", 1).metadata
            assert metadata.lineage["job_id"] == job_id
            assert metadata.lineage["tune_trial_id"] == best.trial_id
            assert metadata.lineage["tune_experiment_id"] == started.experiment_id
            chosen = best.hyper_parameters or {}
            assert metadata.architecture_options["dropout"] == chosen["dropout"]
            updates = [
                ModelUpdate.model_validate_json(value or b"")
                for _, value in consume(broker.bootstrap, [UPDATES_TOPIC], follow=False, idle_s=1.0)
            ]
            assert any(u.model == "tuned-digits" and u.job_id == job_id for u in updates)
            # the experiment was stopped when the job ended, with the agent still running
            assert not [p for p in seen if _alive(p)]
    finally:
        for process in seen:
            if _alive(process):
                with contextlib.suppress(psutil.Error):
                    process.kill()


def _experiment_processes(agent_pid: int) -> list[psutil.Process]:
    """The agent's NNI node manager (`node ... main.js`) and everything under it."""
    for child in psutil.Process(agent_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(part.endswith("main.js") for part in child.cmdline()):
                return [child, *child.children(recursive=True)]
    raise AssertionError("no NNI node manager runs under the agent")


def _http_get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET (urllib raises for statuses >= 400)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status), response.read()
