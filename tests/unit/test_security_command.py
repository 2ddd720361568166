"""`headrace security robustness` in-process on a freshly published (untrained) model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from shard_models import SELECTED_TEST_SAMPLES, publish_shard_trained

from headrace.commands.security import security
from headrace.errors import ConfigError, DatasetError, HeadraceError
from serving.model_config import ModelConfig, TensorSpec
from serving.repository import ModelRepository
from training.adversarial import published_pixel_model
from training.datasets import load_splits
from training.export import export_onnx
from training.models import build_model
from training.preprocess import ChannelStats
from training.published import WEIGHTS_FILE, save_weights


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("lenet5-wide").eval()
    config = ModelConfig(
        name="wide",
        max_batch_size=8,
        inputs=[TensorSpec(name="input", dims=[1, 28, 28])],
        outputs=[TensorSpec(name="logits", dims=[10])],
        preprocessing=ChannelStats((0.2,), (0.3,)).to_spec(),
    )
    root = tmp_path / "repo"
    ModelRepository(root).publish(
        config,
        export_onnx(model, (1, 28, 28), tmp_path / "m.onnx"),
        architecture="lenet5-wide",
        extra_files={WEIGHTS_FILE: save_weights(model, tmp_path / WEIGHTS_FILE)},
        lineage={"dataset": "digits", "seed": 0},
    )
    return root


def test_the_pixel_model_applies_the_published_normalisation(repo: Path) -> None:
    wrapped = published_pixel_model(ModelRepository(repo).get("wide"))
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), wrapped.model((x - 0.2) / 0.3), atol=1e-6)


def test_table_output(repo: Path) -> None:
    args = ["robustness", "--model", "wide", "--repository", str(repo), "--limit", "10"]
    result = CliRunner().invoke(security, [*args, "--steps", "2", "--epsilons", "0,0.3"])
    assert result.exit_code == 0, result.output
    assert "wide version 1 (lenet5-wide) on the digits test split" in result.output
    assert "fgsm acc" in result.output and "0.300" in result.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epsilons", "0,2"], "between 0 and 1"),
        (["--epsilons", "a,b"], "numbers separated by commas"),
        (["--step-size", "3"], "--step-size must be in"),
        # PGD of 5 x 0.001 reported 0.84 'pgd acc' at epsilon 0.3 for a model FGSM takes to 0.01
        (["--step-size", "0.001", "--steps", "5"], "cannot reach epsilon 0.3"),
        (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    ],
)
def test_bad_flags_say_what_to_do(repo: Path, flags: list[str], message: str) -> None:
    args = ["robustness", "--model", "wide", "--repository", str(repo), *flags]
    result = CliRunner().invoke(security, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, HeadraceError)
    assert message in result.exception.message


@pytest.mark.parametrize("seed", [str(10**23), "-1"])
def test_a_seed_torch_cannot_take_is_a_usage_error(repo: Path, seed: str) -> None:
    # 10**23 ended in torch's 'Overflow when unpacking long long' traceback
    args = ["robustness", "--model", "wide", "--repository", str(repo), "--seed", seed]
    result = CliRunner().invoke(security, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--seed'" in result.output


def test_more_threads_than_torch_takes_is_a_usage_error(repo: Path) -> None:
    # torch.set_num_threads(100000) killed the process with SIGSEGV (exit 139), no message;
    # in a subprocess, so the old behaviour fails this test instead of crashing the session
    args = ["security", "robustness", "--model", "wide", "--repository", str(repo)]
    done = subprocess.run(
        [sys.executable, "-m", "headrace", *args, "--limit", "2", "--threads", "100000"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Invalid value for '--threads'" in done.stderr


def test_a_dataset_of_another_shape_is_refused(tmp_path: Path) -> None:
    model = build_model("lenet5-wide", image_size=32).eval()
    config = ModelConfig(
        name="wide32",
        max_batch_size=8,
        inputs=[TensorSpec(name="input", dims=[1, 32, 32])],
        outputs=[TensorSpec(name="logits", dims=[10])],
        preprocessing=ChannelStats((0.2,), (0.3,)).to_spec(),
    )
    ModelRepository(tmp_path / "repo").publish(
        config,
        export_onnx(model, (1, 32, 32), tmp_path / "m.onnx"),
        architecture="lenet5-wide",
        extra_files={WEIGHTS_FILE: save_weights(model, tmp_path / WEIGHTS_FILE)},
    )
    args = ["robustness", "--model", "wide32", "--repository", str(tmp_path / "repo")]
    result = CliRunner().invoke(security, args)
    assert isinstance(result.exception, ConfigError)
    assert "has images of shape (1, 28, 28), but model 'wide32' takes (1, 32, 32)" in (
        result.exception.message
    )


def test_a_model_trained_on_shards_is_attacked_on_its_own_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was attacked on the whole dataset's test split: trained on 600 ingested digits,
    # 47 of the 180 images reported as its test split were training images.
    _, source = publish_shard_trained(tmp_path, "sharded", ChannelStats((0.2,), (0.3,)).to_spec())
    monkeypatch.setenv("HEADRACE_DATA_ROOT", str(tmp_path / "data"))
    args = ["robustness", "--model", "sharded", "--repository", str(tmp_path / "repo")]
    args += ["--epsilons", "0", "--json"]
    result = CliRunner().invoke(security, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["report"]
    test = load_splits("digits", source=source).test
    assert report["samples"] == len(test) == SELECTED_TEST_SAMPLES
    elsewhere = CliRunner().invoke(security, [*args, "--data-root", str(tmp_path / "none")])
    assert isinstance(elsewhere.exception, DatasetError)
    assert "no shards of 'digits'" in elsewhere.exception.message


def _went_on(*args: object, **kwargs: object) -> None:
    raise AssertionError("the command went on with a data flag unread")


def _usage_error(
    argv: list[str],
    flags: list[str],
    stops: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """Run `headrace *argv *flags` ({key}: a key file) through headrace's main, failing the
    test if it reaches `stops`; the stderr of its exit 2."""
    from headrace.cli import main
    from security.watermark.key import generate_key, save_key

    key = save_key(generate_key(10, 0), tmp_path / "key.json")
    monkeypatch.setattr(stops, _went_on)
    args = [arg.format(key=key) for arg in argv]
    monkeypatch.setattr("sys.argv", ["headrace", *args, *flags])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "stops"),
    [
        (["security", "robustness", "--model", "wide"], "security.adversarial.robustness_report"),
        (["compress", "--model", "wide", "--quant", "int8"],
         "security.watermark.embed.FineTuneRecipe.setup"),
        (["watermark", "embed", "--key", "{key}", "--from-model", "wide"],
         "security.watermark.embed.finetune_published"),
    ],
    ids=["security robustness", "compress", "watermark embed"],
)  # fmt: skip
def test_a_data_root_a_model_trained_on_files_would_not_read_is_refused(
    repo: Path,
    argv: list[str],
    stops: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: --data-root, for a model trained on ingested shards, was dropped without a
    word for one trained on its dataset's files: the command ran on those files."""
    flags = ["--repository", str(repo), "--data-root", str(tmp_path / "data")]
    assert _usage_error(argv, flags, stops, tmp_path, monkeypatch, capsys).endswith(
        "error: --data-root: wide:1 was trained on the digits dataset's files, not on ingested "
        "shards, so no data root is read; leave --data-root out\n"
    )


@pytest.mark.parametrize(
    ("argv", "stops"),
    [
        (["security", "robustness", "--model", "sharded"],
         "security.adversarial.robustness_report"),
        (["compress", "--model", "sharded", "--quant", "int8"],
         "security.watermark.embed.FineTuneRecipe.setup"),
        (["compress", "report", "sharded"], "training.compression.report.build_report"),
        (["watermark", "embed", "--key", "{key}", "--from-model", "sharded"],
         "security.watermark.embed.finetune_published"),
    ],
    ids=["security robustness", "compress", "compress report", "watermark embed"],
)  # fmt: skip
def test_a_data_dir_a_model_trained_on_shards_would_not_read_is_refused(
    argv: list[str],
    stops: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: --data-dir beside a model trained on ingested shards went unread without a word:
    the command read the shards (its own selection), not the folder named."""
    publish_shard_trained(tmp_path, "sharded", ChannelStats((0.2,), (0.3,)).to_spec())
    flags = ["--repository", str(tmp_path / "repo"), "--data-dir", str(tmp_path / "mnist")]
    assert _usage_error(argv, flags, stops, tmp_path, monkeypatch, capsys).endswith(
        "error: --data-dir: sharded:1 was trained on ingested shards of the digits dataset, "
        "read from the data root (--data-root), not from a folder of files; leave --data-dir "
        "out\n"
    )


def test_compress_report_refuses_a_data_root_no_version_reads(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `compress report --data-root` for a model trained on its dataset's files (or
    `--data-dir` for one on an embedded dataset) was dropped without a word."""
    from headrace.cli import cli

    monkeypatch.setattr("training.compression.report.build_report", _went_on)
    args = ["compress", "report", "wide", "--repository", str(repo)]
    for flag, message in (
        ("--data-root", "--data-root: wide:1 was trained on the digits dataset's files"),
        ("--data-dir", "--data-dir: dataset 'digits' is embedded and reads no folder"),
    ):
        result = CliRunner().invoke(cli, [*args, flag, str(tmp_path / "data")])
        assert isinstance(result.exception, ConfigError), result.output
        assert result.exception.message.startswith(message)


def test_a_data_root_with_another_dataset_is_refused(tmp_path: Path) -> None:
    """Before: --data-root went unread when --dataset named another than the model's own."""
    publish_shard_trained(tmp_path, "sharded", ChannelStats((0.2,), (0.3,)).to_spec())
    args = ["robustness", "--model", "sharded", "--repository", str(tmp_path / "repo")]
    result = CliRunner().invoke(
        security, [*args, "--dataset", "mnist", "--data-root", str(tmp_path / "data")]
    )
    assert isinstance(result.exception, ConfigError)
    assert result.exception.message == (
        "--data-root reads the ingested shards sharded:1 was trained on (digits); --dataset "
        "mnist is read from its files: leave --data-root out"
    )


@pytest.mark.parametrize(
    ("argv", "stops"),
    [
        (["security", "robustness", "--model", "wide"], "security.adversarial.robustness_report"),
        (["watermark", "embed", "--key", "{key}", "--from-model", "wide"],
         "security.watermark.embed.finetune_published"),
        (["compress", "--model", "wide", "--quant", "int8"],
         "security.watermark.embed.FineTuneRecipe.setup"),
    ],
    ids=["security robustness", "watermark embed", "compress"],
)  # fmt: skip
def test_a_data_dir_a_model_on_embedded_digits_would_not_read_is_refused(
    repo: Path,
    argv: list[str],
    stops: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: --data-dir F for a model trained on digits (embedded) attacked or fine-tuned it
    on digits, F unread without a word."""
    from headrace.cli import main
    from security.watermark.key import generate_key, save_key

    key = save_key(generate_key(10, 0), tmp_path / "key.json")
    monkeypatch.setattr(stops, _went_on)
    args = [arg.format(key=key) for arg in argv]
    flags = ["--repository", str(repo), "--data-dir", str(tmp_path)]
    monkeypatch.setattr("sys.argv", ["headrace", *args, *flags])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: --data-dir: dataset 'digits' is embedded and reads no folder; name a dataset "
        "read from files (mnist or cifar10) or leave --data-dir out\n"
    )


class _Reached(Exception):
    """Raised where a command would start fine-tuning."""


def test_compress_takes_headrace_data_dir_as_a_default_for_a_model_on_digits(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HEADRACE_DATA_DIR is a default for every dataset, not refused as --data-dir is."""
    from headrace.commands.compress import compress

    def reached(self: object) -> None:
        raise _Reached

    monkeypatch.setattr("security.watermark.embed.FineTuneRecipe.setup", reached)
    monkeypatch.setenv("HEADRACE_DATA_DIR", str(tmp_path))
    args = ["--model", "wide", "--quant", "int8", "--repository", str(repo)]
    result = CliRunner().invoke(compress, args)
    assert isinstance(result.exception, _Reached), result.output
