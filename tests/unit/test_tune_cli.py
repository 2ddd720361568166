"""`headrace tune` refuses bad input with exit code 2 and a message that says what to fix."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from headrace.cli import cli, main


def _main_error(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    monkeypatch.setattr("sys.argv", ["headrace", "tune", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2, argv
    return capsys.readouterr().err


def test_unknown_tuner_and_assessor_are_usage_errors() -> None:
    unknown = CliRunner().invoke(cli, ["tune", "--tuner", "Hyperband"])
    assert unknown.exit_code == 2 and "Invalid value for '--tuner'" in unknown.output
    unknown = CliRunner().invoke(cli, ["tune", "--assessor", "Oracle"])
    assert unknown.exit_code == 2 and "Invalid value for '--assessor'" in unknown.output


def test_bad_settings_are_refused_before_any_experiment_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"_type": "loguniform", "_value": [0, 1]},
                                 "colour": {"_type": "choice", "_value": [1]}}))  # fmt: skip
    common = ["--experiment-dir", str(tmp_path / "tune"), "--repository", str(tmp_path / "repo")]
    err = _main_error(["--search-space", str(space), *common], monkeypatch, capsys)
    assert "error: invalid search space" in err
    assert "learning_rate: loguniform needs low > 0" in err and "colour: not a tunable" in err
    err = _main_error(
        ["--search-space", str(tmp_path / "absent.yaml"), *common], monkeypatch, capsys
    )
    assert "cannot read search space" in err
    err = _main_error(["--trials", "1", "--concurrency", "2", *common], monkeypatch, capsys)
    assert "concurrency 2 exceeds trials 1" in err
    err = _main_error(["--epochs", "0", "--model", "lenet9", *common], monkeypatch, capsys)
    assert "epochs" in err and "unknown model 'lenet9'" in err
    # before: NNI's manager did not start ('cannot convert float infinity to integer')
    err = _main_error(["--max-duration-s", "1" + "0" * 400, *common], monkeypatch, capsys)
    assert "max_duration_s: Input should be less than or equal to 31622400" in err
    err = _main_error(["--experiment-id", "a.b", *common], monkeypatch, capsys)
    assert "experiment id 'a.b': use 1 to 32 letters" in err
    err = _main_error(["--resume", "nothere", *common], monkeypatch, capsys)
    assert "no headrace experiment 'nothere'" in err
    assert not (tmp_path / "repo").exists() and not (tmp_path / "tune" / "a.b").exists()


def test_a_tuner_whose_package_went_missing_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ConfigSpace is a dependency; an environment that lost it (here: `import ConfigSpace`
    made to fail, as a None entry in sys.modules does) gets the fix, not a dead experiment."""
    import sys

    monkeypatch.setitem(sys.modules, "ConfigSpace", None)
    err = _main_error(["--tuner", "bohb", "--experiment-dir", str(tmp_path)], monkeypatch, capsys)
    assert "tuner BOHB needs the Python package(s) ConfigSpace" in err
    assert "pip install ConfigSpace" in err
    assert not any(tmp_path.iterdir())


def test_bohb_refuses_an_assessor_and_quantised_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"batch_size": {"_type": "quniform", "_value": [16, 64, 16]}}))
    argv = ["--tuner", "BOHB", "--assessor", "Medianstop", "--search-space", str(space)]
    err = _main_error([*argv, "--experiment-dir", str(tmp_path / "tune")], monkeypatch, capsys)
    assert "BOHB stops poor trials itself" in err and "drop --assessor Medianstop" in err
    assert "give batch_size as uniform, loguniform, randint or choice" in err
    assert not (tmp_path / "tune").exists()


def test_a_busy_port_is_refused_with_a_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["--port", str(port), "--experiment-dir", str(tmp_path), "--trials", "1"]
        err = _main_error(argv, monkeypatch, capsys)
        assert f"error: port {port} is in use: pass another --port" in err
        # NNI never started: no experiment folder is left behind, so a chosen id stays free
        # (it was taken: 'already exists: continue it with --resume', then 'no experiment')
        for _ in range(2):
            err = _main_error([*argv, "--experiment-id", "mine"], monkeypatch, capsys)
            assert f"error: port {port} is in use" in err
    assert not any(tmp_path.iterdir())


def test_a_new_experiment_cancelled_before_nni_started_leaves_no_folder(tmp_path: Path) -> None:
    from headrace.errors import JobCancelled
    from training.config import TrainConfig
    from training.tuning.config import TuneConfig
    from training.tuning.runner import run_tuning

    config = TuneConfig(train=TrainConfig(epochs=1), trials=1, experiment_dir=tmp_path)
    with pytest.raises(JobCancelled, match="cancelled before it started"):
        run_tuning(config, experiment_id="early", should_stop=lambda: True)
    assert not any(tmp_path.iterdir())


def test_a_failed_trial_line_says_why(tmp_path: Path) -> None:
    """The reason a trial printed (`error: ...`, its last stderr line) ends its progress line."""
    from headrace.commands.tune import trial_line
    from training.tuning.nni_experiment import TrialInfo
    from training.tuning.runner import TRIAL_OUTPUT, trial_row

    stderr = tmp_path / TRIAL_OUTPUT / "AbC12" / "trial.stderr"
    stderr.parent.mkdir(parents=True)
    stderr.write_text(
        "error: invalid hyper-parameters:\n"
        "  batch_size: Input should be a valid integer, got a number with a fractional part\n"
    )
    failed = trial_row(tmp_path, TrialInfo(trial_id="AbC12", sequence=0, status="FAILED",
                                           params={"batch_size": 47.5}))  # fmt: skip
    line = trial_line(1, 2, failed)
    assert line.startswith("trial 1/2 AbC12 FAILED: val loss - acc - batch_size=47.5")
    assert line.endswith("-- batch_size: Input should be a valid integer, got a number with a "
                         "fractional part")  # fmt: skip
    running = trial_row(tmp_path, TrialInfo(trial_id="AbC12", sequence=0, status="USER_CANCELED"))
    assert running.error is None and "--" not in trial_line(1, 2, running)


def test_a_missing_or_empty_dataset_folder_is_refused_before_nni_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check `headrace train` makes (loading the dataset), made before any trial runs."""
    import time

    (tmp_path / "empty").mkdir()
    common = ["--dataset", "mnist", "--trials", "2", "--epochs", "1"]
    common += ["--experiment-dir", str(tmp_path / "tune"), "--repository", str(tmp_path / "repo")]
    began = time.monotonic()
    err = _main_error([*common, "--data-dir", str(tmp_path / "absent")], monkeypatch, capsys)
    assert f"error: MNIST folder {tmp_path / 'absent'} does not exist" in err
    err = _main_error([*common, "--data-dir", str(tmp_path / "empty")], monkeypatch, capsys)
    assert "holds none of the expected files" in err
    assert time.monotonic() - began < 10
    assert not (tmp_path / "tune").exists() and not (tmp_path / "repo").exists()


def _stored_experiment(tmp_path: Path, experiment_id: str, published: bool) -> Path:
    """An experiment folder as `headrace tune` leaves it (settings; report once published)."""
    from training.config import TrainConfig
    from training.tuning.config import TuneConfig
    from training.tuning.runner import TUNE_REPORT_FILE, TrialRow, TuneReport, prepare

    config = TuneConfig(
        train=TrainConfig(epochs=1, repository=tmp_path / "repo", name="tuned"),
        trials=4,
        tuner="Random",
        experiment_dir=tmp_path / "tune",
    )
    config, _ = prepare(config, experiment_id)
    if published:
        report = TuneReport(
            experiment_id=experiment_id, experiment_folder="x", tuner="Random", assessor=None,
            trials=[TrialRow(trial_id="t1", sequence=0, status="SUCCEEDED", val_loss=0.3)],
            best_trial_id="t1", best_val_loss=0.3, best_params={}, name="tuned", version=3,
            repository=str(tmp_path / "repo"), test_accuracy=0.9,
        )  # fmt: skip
        path = config.experiment_folder(experiment_id) / TUNE_REPORT_FILE
        path.write_text(report.model_dump_json())
    return config.experiment_root


def test_resuming_an_experiment_that_already_published_runs_and_publishes_nothing(
    tmp_path: Path,
) -> None:
    tune_dir = _stored_experiment(tmp_path, "done1", published=True)
    argv = ["tune", "--resume", "done1", "--experiment-dir", str(tune_dir)]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert "experiment done1 had already finished: its best trial t1" in result.output
    assert f"published as tuned version 3 to {tmp_path / 'repo'}; nothing was run" in result.output
    assert "headrace tune view done1" in result.output
    as_json = CliRunner().invoke(cli, [*argv, "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["version"] == 3
    assert not (tmp_path / "repo").exists() and not (tune_dir / "done1" / "db").exists()


def test_flags_that_contradict_a_resumed_experiment_are_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume keeps the experiment's settings: a differing flag is an error, not ignored."""
    tune_dir = _stored_experiment(tmp_path, "stopped1", published=False)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"dropout": {"_type": "uniform", "_value": [0.0, 0.5]}}))
    argv = ["--resume", "stopped1", "--experiment-dir", str(tune_dir), "--trials", "8"]
    argv += ["--name", "other", "--epochs", "3", "--model", "resnet20", "--tuner", "tpe"]
    argv += ["--search-space", str(space), "--experiment-id", "x2"]
    err = _main_error(argv, monkeypatch, capsys)
    assert "error: --resume stopped1 continues the experiment with the settings" in err
    for flag in (
        "--trials 8 (experiment: 4)",
        "--name other (experiment: tuned)",
        "--epochs 3 (experiment: 1)",
        "--model resnet20 (experiment: lenet5)",
        "--tuner TPE (experiment: Random)",
        f"--search-space {space} (not the experiment's search space)",
        "--experiment-id x2 (resuming: stopped1)",
    ):
        assert flag in err, err
    assert "start a new experiment without --resume" in err
    assert not (tune_dir / "stopped1" / "db").exists()  # NNI never started


def test_flags_equal_to_the_resumed_experiment_are_accepted(tmp_path: Path) -> None:
    from headrace.commands.tune_resume import resume_conflicts
    from training.tuning.runner import load_tune_config

    tune_dir = _stored_experiment(tmp_path, "stopped2", published=False)
    stored = load_tune_config(tune_dir, "stopped2")
    space = tmp_path / "space.json"
    space.write_text(json.dumps(stored.search_space))
    same = {"trials": 4, "tuner": "random", "name": "tuned", "epochs": 1, "model": "lenet5",
            "repository": tmp_path / "repo", "search_space": space, "assessor": None,
            "experiment_id": "stopped2", "dataset": "digits", "seed": 0}  # fmt: skip
    assert resume_conflicts(stored, "stopped2", same) == []
    assert resume_conflicts(stored, "stopped2", {"assessor": "Medianstop"}) == [
        "--assessor Medianstop (experiment: none)"
    ]


def test_a_port_no_tcp_port_can_have_is_a_usage_error(tmp_path: Path) -> None:
    """`tune view --port 70000` ended in an OverflowError traceback, `--port 0` in NNI's
    'did not start on port 0' after trying; both are refused before anything starts."""
    for argv in (["tune", "view", "someid"], ["tune"]):
        for port in ("0", "70000", "-1"):
            result = CliRunner().invoke(
                cli, [*argv, "--port", port, "--experiment-dir", str(tmp_path)]
            )
            assert result.exit_code == 2, (argv, port, result.output)
            assert f"Invalid value for '--port': {port} is not in the range 1<=x<=65535" in (
                result.output
            )
    assert not any(tmp_path.iterdir())


def test_an_experiment_another_process_runs_is_neither_resumed_nor_viewed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--resume` of a running experiment started a second NNI manager on its database: every
    trial ran twice ('trial 5/3') and both processes published the best trial."""
    import fcntl
    import os

    from training.tuning.nni_experiment import LOCK_FILE, NNI_DATABASE

    tune_dir = _stored_experiment(tmp_path, "busy2", published=False)
    folder = tune_dir / "busy2"
    (folder / NNI_DATABASE).mkdir()
    with open(folder / LOCK_FILE, "w") as held:  # as the running `headrace tune` holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"pid {os.getpid()}, web UI http://127.0.0.1:1/oview")
        held.flush()
        for argv in (["--resume", "busy2"], ["view", "busy2", "--timeout-s", "1"]):
            err = _main_error([*argv, "--experiment-dir", str(tune_dir)], monkeypatch, capsys)
            assert (
                f"error: experiment busy2 is in use by another headrace process (pid "
                f"{os.getpid()}, web UI http://127.0.0.1:1/oview): wait for it to end" in err
            ), err
    assert sorted(p.name for p in folder.iterdir()) == ["db", "headrace-tune.json", LOCK_FILE]
    assert not (folder / "log").exists()  # NNI never started


def test_an_experiment_id_that_is_a_path_is_refused_for_resume_and_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--resume ../tune/ID` and `view ../tune/ID` read another folder's experiment and wrote
    the path, as an experiment id, into NNI's list (~/nni-experiments/.experiment)."""
    tune_dir = _stored_experiment(tmp_path, "real1", published=False)
    for bad in ("../tune/real1", "real1\n", ""):
        for argv in (["--resume", bad], ["view", bad, "--timeout-s", "1"]):
            err = _main_error([*argv, "--experiment-dir", str(tune_dir)], monkeypatch, capsys)
            assert f"error: experiment id {bad!r}: use 1 to 32 letters, digits" in err, err


def test_an_experiment_whose_manager_outlived_a_killed_headrace_is_not_run_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """NNI's manager runs detached: after `kill -9` of `headrace tune` it went on with the
    trials, and `--resume` started a second manager on the same database beside it."""
    import subprocess
    import sys

    from training.tuning.nni_experiment import NNI_DATABASE

    tune_dir = _stored_experiment(tmp_path, "orphan1", published=False)
    (tune_dir / "orphan1" / NNI_DATABASE).mkdir()
    manager = subprocess.Popen(  # a stand-in with the command line of NNI's manager
        [sys.executable, "-c", "import sys; sys.stdin.read()", "/nni_node/main.js",
         "--port", "4321", "--experiment-id", "orphan1",
         "--experiments-directory", str(tune_dir)],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    try:
        for argv in (["--resume", "orphan1"], ["view", "orphan1", "--timeout-s", "1"]):
            err = _main_error([*argv, "--experiment-dir", str(tune_dir)], monkeypatch, capsys)
            assert (
                f"error: experiment orphan1 is still run by an NNI manager (pid {manager.pid}, "
                "web UI http://127.0.0.1:4321/oview) that a headrace process left behind when "
                f"it was killed: stop it (`kill {manager.pid}`) and try again" in err
            ), err
    finally:
        manager.communicate(b"", timeout=10)  # its stdin closes: it exits
    assert not (tune_dir / "orphan1" / "log").exists()  # NNI never started


def test_a_resumed_experiment_counts_trials_against_its_own_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--resume` of a 4-trial experiment printed 'trial 1/10': the budget of the flags'
    defaults, not of the experiment."""
    from training.tuning import runner
    from training.tuning.runner import TrialRow, TuneReport

    tune_dir = _stored_experiment(tmp_path, "stopped3", published=False)
    row = TrialRow(trial_id="t1", sequence=0, status="SUCCEEDED", val_loss=0.3)

    def run_tuning(
        config: object, *, on_trial: Callable[[TrialRow], None], **_: object
    ) -> TuneReport:
        on_trial(row)
        return TuneReport(
            experiment_id="stopped3", experiment_folder="x", tuner="Random", assessor=None,
            trials=[row], best_trial_id="t1", best_val_loss=0.3, best_params={}, name="tuned",
            version=1, repository=str(tmp_path / "repo"), test_accuracy=0.9,
        )  # fmt: skip

    monkeypatch.setattr(runner, "run_tuning", run_tuning)
    result = CliRunner().invoke(
        cli, ["tune", "--resume", "stopped3", "--experiment-dir", str(tune_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "trial 1/4 t1 SUCCEEDED" in result.output


def test_a_moved_experiment_is_refused_for_resume_with_where_it_was_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `tune --resume ID --experiment-dir NEW` read the settings from NEW, then ran
    NNI, read trial archives and wrote its report in the folder the experiment was started in
    (its stored settings say so, and NNI's trial command names its settings file there): after
    a move that folder was gone, or an old copy that was resumed instead."""
    tune_dir = _stored_experiment(tmp_path, "moved1", published=False)
    moved = tune_dir.rename(tmp_path / "elsewhere")

    def experiment(root: Path, experiment_id: str) -> None:
        raise AssertionError(f"NNI was started in {root}")

    monkeypatch.setattr("training.tuning.runner.NniExperiment", experiment)
    err = _main_error(["--resume", "moved1", "--experiment-dir", str(moved)], monkeypatch, capsys)
    assert err == (
        f"error: experiment 'moved1' was started in {tune_dir} and its trials read their "
        f"settings there, so it cannot be resumed from {moved}: move it back and pass "
        f"--experiment-dir {tune_dir}, or start a new experiment\n"
    )


def test_view_lists_a_trial_left_running_by_the_stopped_experiment_as_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NNI's database keeps the state a trial had when its experiment stopped: the view's
    table said RUNNING (and WAITING) for trials that no process runs any more."""
    from training.tuning import nni_experiment
    from training.tuning.nni_experiment import TrialInfo

    states = ["SUCCEEDED", "RUNNING", "WAITING", "EARLY_STOPPED", "FAILED"]

    class StoppedExperiment:
        url = "http://127.0.0.1:1/oview"

        def __init__(self, root: Path, experiment_id: str) -> None:
            self.folder = root / experiment_id

        def view(self, port: int | None = None) -> None:
            pass

        def trials(self) -> list[TrialInfo]:
            return [TrialInfo(trial_id=f"t{i}", sequence=i, status=s) for i, s in enumerate(states)]

        def stop(self) -> None:
            pass

    monkeypatch.setattr(nni_experiment, "NniExperiment", StoppedExperiment)
    argv = ["tune", "view", "old1", "--experiment-dir", str(tmp_path), "--timeout-s", "0.01"]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    listed = {line.split()[1]: line.split()[2] for line in result.output.splitlines()[2:]}
    assert listed == {"t0": "SUCCEEDED", "t1": "INTERRUPTED", "t2": "INTERRUPTED",
                      "t3": "EARLY_STOPPED", "t4": "FAILED"}  # fmt: skip
