"""Acceptance runs of the foundation: the demo's training and MNIST, with default settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MNIST_COMMAND = (
    "headrace train --model lenet5 --dataset mnist --data-dir ../shared/data/mnist --json"
)


def _train(args: list[str], cwd: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "headrace", "train", *args, "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, object] = json.loads(done.stdout)  # only one JSON object on stdout
    for key in ("test_accuracy", "val_loss", "epochs_run", "model", "version"):
        assert key in report
    return report


@pytest.fixture(scope="module")
def demo_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """The demo's training (`make demo`'s command), run once: its folder and its report."""
    folder = tmp_path_factory.mktemp("demo")
    return folder, _train(["--model", "lenet5", "--dataset", "digits"], folder)


def test_demo_training_reaches_97_percent_on_digits(
    demo_training: tuple[Path, dict[str, object]],
) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "headrace train --model lenet5 --dataset digits --repository" in makefile
    folder, report = demo_training
    assert float(report["test_accuracy"]) >= 0.97  # type: ignore[arg-type]
    assert report["version"] == 1
    assert (folder / "model_repository" / "lenet5-digits" / "1" / "model.onnx").is_file()


@pytest.mark.slow
def test_mnist_default_settings_reach_98_percent(mnist_dir: Path, tmp_path: Path) -> None:
    assert MNIST_COMMAND in (REPO_ROOT / "README.md").read_text()
    report = _train(
        ["--model", "lenet5", "--dataset", "mnist", "--data-dir", str(mnist_dir)], tmp_path
    )
    assert float(report["test_accuracy"]) >= 0.98  # type: ignore[arg-type]


def test_demo_runs_the_kafka_and_grpc_paths(
    demo_training: tuple[Path, dict[str, object]],
) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "-m headrace.demo --repository" in makefile
    folder, _report = demo_training  # the demo serves the model its training published
    done = subprocess.run(
        [sys.executable, "-m", "headrace.demo", "--repository", "model_repository",
         "--model", "lenet5-digits", "--requests", "200", "--grpc-count", "3"],
        cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "200/200 requests answered" in done.stdout
    assert "accuracy from the results topic" in done.stdout
    assert "correct through tritonclient.grpc" in done.stdout


def test_demo_with_a_model_the_repository_lacks_is_one_error_line(tmp_path: Path) -> None:
    # It ran the Kafka half (every request to the DLQ as model_not_found), then died in the gRPC
    # half with two tracebacks.
    (tmp_path / "repo").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "headrace.demo", "--repository", "repo", "--model", "nosuch",
         "--requests", "5", "--grpc-count", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith("error: model 'nosuch' not found")
    assert done.stderr.count("\n") == 1 and done.stdout == ""
