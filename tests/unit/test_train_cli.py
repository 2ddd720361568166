"""`headrace train --width/--dropout`: they reach the model; invalid values exit with code 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from headrace.cli import cli, main
from headrace.errors import ConfigError
from training.checkpoint import load_checkpoint


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--width", "0"], "width: Input should be greater than 0"),
        (["--width", "32"], "width: Input should be less than or equal to 16"),
        (["--dropout", "1"], "dropout: Input should be less than 1"),
        (["--dropout", "-0.1"], "dropout: Input should be greater than or equal to 0"),
        (["--width", "wide"], "Invalid value for '--width'"),
        # a traceback from scikit-learn's train_test_split after the data had loaded
        (["--seed", str(2**32)], "seed: Input should be less than or equal to 4294967295"),
    ],
)
def test_invalid_width_or_dropout_is_refused_with_exit_code_2(
    argv: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(
        "sys.argv", ["headrace", "train", *argv, "--repository", str(tmp_path / "repo")]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("flag", ["--repository", "--runs-dir"])
def test_a_file_where_a_folder_goes_is_refused_before_training(
    flag: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # NotADirectoryError tracebacks: --runs-dir at the start, --repository at the publish,
    # after the whole training had run
    (tmp_path / "file").write_text("")
    folders = {"--repository": tmp_path / "repo", "--runs-dir": tmp_path / "runs"}
    folders[flag] = tmp_path / "file" / "sub"
    argv = ["headrace", "train", "--epochs", "1"]
    for name, folder in folders.items():
        argv += [name, str(folder)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'file'} is a file, not a folder; pass a folder as {flag}" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "repo").exists()


@pytest.mark.parametrize("flag", ["--repository", "--runs-dir"])
def test_the_agent_refuses_a_file_where_a_folder_goes_at_start(flag: str, tmp_path: Path) -> None:
    # it said "training agent ready" and rejected every job it was sent
    (tmp_path / "file").write_text("")
    folders = {"--repository": tmp_path / "repo", "--runs-dir": tmp_path / "runs"}
    folders[flag] = tmp_path / "file"
    args = ["train", "agent", "--bootstrap", "127.0.0.1:1"]  # checked before Kafka is asked
    for name, folder in folders.items():
        args += [name, str(folder)]
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, ConfigError), result.output
    assert f"{tmp_path / 'file'} is a file, not a folder; pass a folder as {flag}" in str(
        result.exception
    )


def test_both_problems_are_listed_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["headrace", "train", "--width", "0", "--dropout", "1"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error:")
    assert "  width: " in err and "  dropout: " in err


def test_width_reaches_the_model(tmp_path: Path) -> None:
    args = [
        "train", "--width", "0.5", "--dropout", "0.2", "--epochs", "1", "--no-publish", "--json",
        "--runs-dir", str(tmp_path / "runs"), "--run-id", "w",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    weights = load_checkpoint(tmp_path / "runs" / "lenet5-digits-w")["model"]
    assert weights["features.0.weight"].shape[0] == 3  # LeNet-5's 6 first-layer channels, halved


def test_a_name_serving_other_inputs_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from serving.model_config import ModelConfig, TensorSpec
    from serving.repository import ModelRepository

    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not used")
    cifar_like = ModelConfig(
        name="lenet5-digits",
        inputs=[TensorSpec(name="input", dims=[3, 32, 32])],
        outputs=[TensorSpec(name="logits", dims=[10])],
    )
    ModelRepository(tmp_path / "repo").publish(cifar_like, onnx_file, architecture="lenet5")
    config_file = tmp_path / "repo" / "lenet5-digits" / "config.json"
    before = config_file.read_bytes()
    monkeypatch.setattr(
        "sys.argv",
        ["headrace", "train", "--epochs", "1", "--repository", str(tmp_path / "repo"),
         "--runs-dir", str(tmp_path / "runs"), "--run-id", "r"],
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "its inputs and labels differ" in err and "another name (--name)" in err
    assert config_file.read_bytes() == before
    assert not (tmp_path / "runs" / "lenet5-digits-r").exists()  # no epoch was trained


ABSURD_SPEC_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    # torch: 'value cannot be converted to type float without overflow', after the data loaded
    "weight_decay": ({"weight_decay": 1e308}, "weight_decay: Input should be less than or equal"),
    # 1e309 reads as infinity: the loss became NaN after a whole epoch (TrainingDiverged)
    "weight_decay inf": ({"weight_decay": 1e309}, "weight_decay: Input should be less than"),
    # torch could not allocate 10**15 bytes for the padded batch
    "crop_padding": (
        {"preprocess": {"augment": {"crop_padding": 10**6}}},
        "preprocess.augment.crop_padding: Input should be less than or equal to 16",
    ),
    # published, then Triton's ModelConfig (max_batch_size int32) failed for the model
    "max_batch_size": ({"max_batch_size": 2**31}, "max_batch_size: Input should be less than"),
    "batch of 10**9": ({"max_batch_size": 10**9}, "max_batch_size: Input should be less than"),
    # accepted, and a run of at most 10,000 epochs never used it
    "patience": ({"patience": 10**30}, "patience: Input should be less than or equal to 10000"),
    "powersgd warm-up": (
        {"distributed": {"workers": 2, "compression": {"kind": "powersgd", "warmup_steps": 1e18}}},
        "distributed.compression.powersgd.warmup_steps: Input should be less than or equal to "
        "1000000000",
    ),
    # NNI's manager failed to start: 'cannot convert float infinity to integer'
    "tune budget": (
        {"kind": "tune", "tune": {"trials": 2, "max_duration_s": 10**400}},
        "tune.max_duration_s: Input should be less than or equal to 31622400",
    ),
}


@pytest.mark.parametrize("name", list(ABSURD_SPEC_VALUES))
def test_absurd_numbers_in_a_spec_are_refused_when_it_is_validated(name: str) -> None:
    """Before: each was accepted (`train submit`, the agent's `accepted`) and the job crashed
    later, after the data had loaded or once it was published."""
    from training.job_spec import parse_job_spec

    values, expected = ABSURD_SPEC_VALUES[name]
    with pytest.raises(ConfigError, match=expected):
        parse_job_spec({"model": "lenet5", **values})


def test_a_search_space_reaching_an_absurd_weight_decay_is_refused() -> None:
    from training.tuning.search_space import check_search_space

    space = {"weight_decay": {"_type": "loguniform", "_value": [1e-6, 1e308]}}
    with pytest.raises(ConfigError, match="weight_decay: value 1e[+]308 is refused"):
        check_search_space(space)


def test_a_search_space_reaching_an_absurd_patience_is_refused() -> None:
    """Before: accepted, then NNI's TPE tuner failed drawing the first trial's
    ('high is out of bounds for int64')."""
    from training.tuning.search_space import check_search_space

    space = {"patience": {"_type": "randint", "_value": [1, 10**30]}}
    with pytest.raises(ConfigError, match="patience: Input should be less than or equal to 10000"):
        check_search_space(space)


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["train", "submit", "--bootstrap", "127.0.0.1:1"], "job spec"),
        (["tune", "--search-space"], "search space"),
    ],
)
def test_a_settings_file_that_is_not_utf8_is_refused_with_exit_code_2(
    argv: list[str],
    what: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: a UnicodeDecodeError traceback, exit 1 (a binary file, or YAML saved as
    UTF-16 by an editor)."""
    spec = tmp_path / "spec.yaml"
    spec.write_bytes("model: lenet5\n".encode("utf-16"))
    monkeypatch.setattr("sys.argv", ["headrace", *argv, str(spec)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {what} {spec} is not UTF-8 text (byte 0xff at offset 0); "
        "save it as UTF-8 JSON or YAML\n"
    )


@pytest.mark.parametrize("epochs_done", [0, 2])
def test_ctrl_c_names_the_run_folder_to_resume(
    epochs_done: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: Ctrl-C during `headrace train` printed 'aborted' only; the checkpoint was in a
    run folder named after the start time, which the user had to look for in --runs-dir."""
    from training.checkpoint import checkpoint_path, save_checkpoint
    from training.config import TrainConfig
    from training.recipe import run_folder

    def interrupted(config: TrainConfig) -> None:
        if epochs_done:  # where the real recipe keeps its checkpoint
            save_checkpoint(checkpoint_path(run_folder(config)), {"model": {}, "epoch": 2})
        raise KeyboardInterrupt

    monkeypatch.setattr("training.recipe.run_training", interrupted)
    monkeypatch.setattr(
        "sys.argv", ["headrace", "train", "--runs-dir", str(tmp_path), "--no-publish"]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    if not epochs_done:
        assert err == "aborted\n"  # no epoch ended: nothing to resume
        return
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("lenet5-digits-")
    assert err == (
        f"stopped; the last finished epoch is checkpointed in {folder}: continue with "
        f"`headrace train --resume {folder}` and the same settings\naborted\n"
    )


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_data_dir_the_dataset_would_not_read_is_refused(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `headrace train --data-dir ~/mnist` (no --dataset) trained on the embedded
    digits, ignoring the folder, and published lenet5-digits; a spec the same."""
    from training.job_spec import parse_job_spec

    monkeypatch.setattr("sys.argv", ["headrace", command, "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: --data-dir: dataset 'digits' is embedded and reads no folder; name a dataset "
        "read from files (mnist or cifar10) or leave --data-dir out\n"
    )
    with pytest.raises(ConfigError, match="data_dir: dataset 'digits' is embedded"):
        parse_job_spec({"model": "lenet5", "data_dir": str(tmp_path)})
    assert parse_job_spec({"model": "lenet5", "dataset": "mnist", "data_dir": str(tmp_path)})


def test_an_agent_asked_for_more_cpus_than_any_host_has_is_refused_before_kafka() -> None:
    """Before: `train agent --ray-cpus 10**30` reached Kafka, then Ray refused it with a
    traceback ('Resource quantities must be at most 100000000000000.0')."""
    from click.testing import CliRunner

    from streams.job_agent import MAX_RAY_CPUS, JobAgentConfig

    huge = str(10**30)
    refused = CliRunner().invoke(
        cli, ["train", "agent", "--bootstrap", "127.0.0.1:1", "--ray-cpus", huge]
    )
    assert refused.exit_code == 2
    assert f"'--ray-cpus': {huge} is not in the range 1<=x<={MAX_RAY_CPUS}" in refused.output
    with pytest.raises(ValueError, match=f"less than or equal to {MAX_RAY_CPUS}"):
        JobAgentConfig(
            bootstrap="x:9092", repository=Path("."), runs_dir=Path("."), ray_cpus=int(huge)
        )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--data-root", "{tmp}"],
            "error: --data-root only applies with --from-shards (or --up-to-offset): without "
            "them training reads the dataset's files (--data-dir)\n",
        ),
        (
            ["--dataset", "mnist", "--from-shards", "--data-dir", "{tmp}"],
            "error: --data-dir is not read with --from-shards: training reads the ingested "
            "shards under --data-root; leave --data-dir out\n",
        ),
    ],
    ids=["data-root without shards", "data-dir with shards"],
)
def test_a_data_flag_the_data_choice_would_not_read_is_refused(
    flags: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `train --data-root R` (no --from-shards) trained on the dataset's files and
    `train --from-shards --data-dir F` on the shards, each flag dropped without a word."""

    def trained(config: object) -> None:
        raise AssertionError(f"training started with a flag dropped: {config}")

    monkeypatch.setattr("training.recipe.run_training", trained)
    argv = ["headrace", "train", *(flag.format(tmp=tmp_path) for flag in flags)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == message


@pytest.mark.parametrize(
    ("flags", "conflict"),
    [
        (["--runs-dir", "{tmp}/other"], "--runs-dir {tmp}/other (the run's: {tmp}/runs)"),
        (["--run-id", "r2"], "--run-id r2 (the run's folder: lenet5-digits-r1)"),
        (["--runs-dir", "{tmp}/runs", "--run-id", "r1"], None),  # the same settings again
    ],
    ids=["another runs-dir", "another run-id", "the run's own"],
)
def test_run_folder_flags_beside_resume_must_name_the_resumed_run(
    flags: list[str],
    conflict: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `train --resume runs/lenet5-digits-r1 --runs-dir other` (or `--run-id r2`)
    continued in runs/lenet5-digits-r1, the flags unread without a word."""
    folder = tmp_path / "runs" / "lenet5-digits-r1"
    folder.mkdir(parents=True)
    started: list[Path] = []

    class Started(Exception):
        pass

    def run_training(config: Any) -> None:
        started.append(config.resume)
        raise Started

    monkeypatch.setattr("training.recipe.run_training", run_training)
    argv = ["train", "--resume", str(folder), *(flag.format(tmp=tmp_path) for flag in flags)]
    result = CliRunner().invoke(cli, argv)
    if conflict is None:
        assert isinstance(result.exception, Started), result.output
        assert started == [folder]
        return
    assert isinstance(result.exception, ConfigError)
    assert result.exception.message == (
        f"--resume continues the run in {folder}; these flags name another run folder: "
        f"{conflict.format(tmp=tmp_path)}. Leave them out, or drop --resume to start a new run"
    )
    assert not started
