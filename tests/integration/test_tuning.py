"""A real NNI experiment (local training service): web UI, REST API, cancel, resume, view, publish.

Tiny trials (digits, one epoch). The first run is cancelled after its first
trial; while it runs the web UI answers 200 and the REST API lists the trial.
`--resume` finishes the trial budget and publishes the best trial with its
experiment id, trial id and hyper-parameters in the lineage; `view` serves the
finished experiment again. Every node manager this test starts is gone at the
end (checked by pid; killed by pid if a failure left one behind). Anneal and BOHB
each run a small experiment to the end.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from headrace.errors import JobCancelled
from serving.repository import ModelRepository
from training.config import TrainConfig
from training.tuning.config import TuneConfig, TunerName
from training.tuning.nni_experiment import NniExperiment
from training.tuning.runner import TrialRow, run_tuning

SPACE = {
    "learning_rate": {"_type": "loguniform", "_value": [1e-3, 1e-2]},
    "width": {"_type": "choice", "_value": [0.5, 1.0]},
}


def _cmdline(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())
    return ""


def _dispatcher_flags() -> set[str]:
    """NNI_INCLUDE_INTERMEDIATE_RESULTS of every tuner dispatcher running under us (NNI's
    manager starts it, through a shell, with SDK_PROCESS=dispatcher)."""
    flags: set[str] = set()
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            env = process.environ()
            if env.get("SDK_PROCESS") == "dispatcher":
                flags.add(env.get("NNI_INCLUDE_INTERMEDIATE_RESULTS", "<unset>"))
    return flags


def _alive(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


def _experiment_processes() -> list[psutil.Process]:
    """Every process the experiment runs under us: NNI's node manager (`node ... main.js`),
    its tuner dispatcher and the trials; the node manager must be among them."""
    found = psutil.Process().children(recursive=True)
    assert any("main.js" in _cmdline(p) for p in found), "no node manager running"
    return found


@pytest.fixture
def no_leftover() -> Iterator[list[psutil.Process]]:
    """Collects the experiment's processes seen; none may outlive the test (killed by pid if so)."""
    seen: list[psutil.Process] = []
    yield seen
    alive = [p for p in seen if _alive(p)]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    assert not alive, f"left running: {[(p.pid, _cmdline(p)[:80]) for p in alive]}"


def test_tuning_run_cancel_resume_view_and_publish(
    tmp_path: Path, no_leftover: list[psutil.Process]
) -> None:
    config = TuneConfig(
        train=TrainConfig(epochs=1, repository=tmp_path / "repo", name="tuned"),
        tuner="TPE",
        assessor="Medianstop",
        trials=2,
        concurrency=1,
        search_space=SPACE,
        experiment_dir=tmp_path / "tune",
    )
    checks: dict[str, object] = {}
    finished: list[TrialRow] = []

    def on_started(experiment_id: str, url: str) -> None:
        no_leftover.extend(_experiment_processes())
        checks["id"], checks["ui"] = experiment_id, _http_get(url)[0]
        checks["port"] = int(url.split(":")[2].split("/")[0])

    def on_trial(row: TrialRow) -> None:
        finished.append(row)
        no_leftover.extend(psutil.Process().children(recursive=True))
        api = f"http://127.0.0.1:{checks['port']}/api/v1/nni/trial-jobs"
        checks["listed"] = [job["trialJobId"] for job in json.loads(_http_get(api)[1])]
        checks["dispatcher"] = _dispatcher_flags()

    with pytest.raises(JobCancelled):
        run_tuning(
            config, on_started=on_started, on_trial=on_trial, should_stop=lambda: bool(finished)
        )
    assert checks["ui"] == 200
    assert finished and finished[0].status == "SUCCEEDED" and finished[0].val_loss is not None
    assert finished[0].trial_id in checks["listed"]  # type: ignore[operator]
    # a trial the assessor stops reaches the tuner with its last result (see nni_experiment.py)
    assert checks["dispatcher"] == {"true"}
    experiment_id = str(checks["id"])
    assert not [p for p in no_leftover if _alive(p)]
    # every process of the cancelled run (node manager, dispatcher, trials) is gone

    resumed: list[str] = []

    def on_resumed_trial(row: TrialRow) -> None:
        resumed.append(row.trial_id)
        checks["resumed_dispatcher"] = _dispatcher_flags()

    report = run_tuning(
        config,
        resume_id=experiment_id,
        on_started=lambda _id, _url: no_leftover.extend(_experiment_processes()),
        on_trial=on_resumed_trial,
    )
    assert checks["resumed_dispatcher"] == {"true"}
    succeeded = [row for row in report.trials if row.status == "SUCCEEDED"]
    assert len(succeeded) == 2 and finished[0].trial_id in resumed
    best = min(succeeded, key=lambda row: row.val_loss or float("inf"))
    assert report.best_trial_id == best.trial_id and report.version == 1

    version = ModelRepository(tmp_path / "repo").get("tuned", 1)
    lineage = version.metadata.lineage
    assert lineage["tune_experiment_id"] == experiment_id
    assert lineage["tune_trial_id"] == best.trial_id
    params = json.loads(str(lineage["tune_hyper_parameters"]))
    assert params == best.params and set(params) == set(SPACE)
    assert version.metadata.architecture_options["width"] == params["width"]
    archive = tmp_path / "tune" / experiment_id / "trials" / best.trial_id
    assert {"weights.pt", "trial.json", "fit.json"} <= {p.name for p in archive.iterdir()}

    # resuming it again publishes nothing new: the saved report comes back, NNI is not started
    again = run_tuning(
        config,
        resume_id=experiment_id,
        on_started=lambda _id, _url: no_leftover.extend(_experiment_processes()),
    )
    assert again == report and ModelRepository(tmp_path / "repo").versions("tuned") == [1]

    viewer = NniExperiment(tmp_path / "tune", experiment_id)
    try:
        viewer.view()
        no_leftover.extend(_experiment_processes())
        assert _http_get(viewer.url)[0] == 200
        assert {t.trial_id for t in viewer.trials()} >= {row.trial_id for row in succeeded}
    finally:
        viewer.stop()


@pytest.mark.parametrize(("tuner", "epochs", "concurrency"), [("Anneal", 1, 2), ("BOHB", 3, 1)])
def test_anneal_and_bohb_run_an_experiment_to_the_end(
    tuner: TunerName,
    epochs: int,
    concurrency: int,
    tmp_path: Path,
    no_leftover: list[psutil.Process],
) -> None:
    """Two one-epoch trials. BOHB (--epochs 3, eta 3) starts with a bracket of budget 1: both
    its trials must train the one epoch their budget allows, not the job's 3. Its trials run
    one after the other, so the second exists only if the advisor survived the first one's
    result (NNI 3.0's own BOHB died there and the experiment sat idle to its time limit)."""
    config = TuneConfig(
        train=TrainConfig(epochs=epochs, repository=tmp_path / "repo", name="tuned"),
        tuner=tuner,
        trials=2,
        concurrency=concurrency,
        search_space=SPACE,
        experiment_dir=tmp_path / "tune",
        max_duration_s=150,  # a dead advisor ends the test here, not at pytest's timeout
    )
    report = run_tuning(
        config,
        on_started=lambda _id, _url: no_leftover.extend(_experiment_processes()),
        on_trial=lambda _row: no_leftover.extend(psutil.Process().children(recursive=True)),
        poll_s=0.25,
    )
    assert [row.status for row in report.trials] == ["SUCCEEDED", "SUCCEEDED"]
    assert [row.epochs_run for row in report.trials] == [1, 1]
    assert all(set(row.params) == set(SPACE) for row in report.trials)  # no budget key
    assert report.tuner == tuner and report.version == 1
    lineage = ModelRepository(tmp_path / "repo").get("tuned", 1).metadata.lineage
    assert lineage["tune_tuner"] == tuner and lineage["tune_trial_id"] == report.best_trial_id


def _http_get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET (urllib raises for statuses >= 400)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status), response.read()
