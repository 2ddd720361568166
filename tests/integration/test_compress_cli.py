"""`headrace compress` on a quickly trained LeNet-5 digits model: QAT int8, pruning + distillation +
QAT int4, the report, serving the compressed version, and the errors a user can meet."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto

from headrace.cli import cli
from headrace.errors import ConfigError, RepositoryError
from serving.model_manager import ModelManager
from serving.repository import ModelRepository
from training.compression.onnx_export import session
from training.config import TrainConfig
from training.datasets import load_splits
from training.export import export_onnx
from training.models import build_model
from training.published import WEIGHTS_FILE, load_published_model, save_weights
from training.recipe import run_training

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "lenet5-digits"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding LeNet-5 trained 4 epochs on digits (version 1)."""
    root = tmp_path_factory.mktemp("compress")
    run_training(
        TrainConfig(
            epochs=4, repository=root / "repo", runs_dir=root / "runs", progress=False, patience=0
        )
    )
    return root


def _compress(root: Path, *args: str) -> Result:
    return CliRunner().invoke(
        cli,
        ["compress", "--model", NAME, "--repository", str(root / "repo"),
         "--runs-dir", str(root / "runs"), "--latency-seconds", "0.05", *args],
    )  # fmt: skip


def _report(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def int8(root: Path) -> dict[str, Any]:
    return _report(_compress(root, "--quant", "int8", "--qat-epochs", "2", "--json"))


@pytest.fixture(scope="module")
def pruned_int4(root: Path, int8: dict[str, Any]) -> dict[str, Any]:
    args = ["--prune", "l1", "--sparsity", "0.5", "--distill-from", f"{NAME}:1", "--quant", "int4"]
    return _report(_compress(root, *args, "--epochs", "2", "--qat-epochs", "1", "--json"))


def _initializer_types(path: Path) -> set[int]:
    proto = onnx.load(str(path))
    return {t.data_type for t in proto.graph.initializer if len(t.dims) >= 2}


def test_int8_qat_is_published_with_int8_weights(root: Path, int8: dict[str, Any]) -> None:
    assert int8["version"] == 2 and int8["source"] == f"{NAME}:1"
    assert int8["compression"] == "int8"
    assert int8["test_samples"] == 180
    assert int8["test_accuracy"] >= int8["source_test_accuracy"] - 0.05
    assert int8["model_bytes"] <= int8["source_model_bytes"] / 3.5
    assert int8["parameters"] == int8["source_parameters"]
    assert set(int8["latency_s"]) == {"1", "64"} and all(v > 0 for v in int8["latency_s"].values())
    version = ModelRepository(root / "repo").get(NAME, 2)
    assert _initializer_types(version.model_file) == {TensorProto.INT8}
    assert WEIGHTS_FILE not in version.metadata.sha256  # ONNX only
    lineage, metrics = version.metadata.lineage, version.metadata.metrics
    assert lineage["compressed_from"] == f"{NAME}:1" and lineage["compression_quant"] == "int8"
    assert lineage["dataset"] == "digits" and lineage["seed"] == 0
    assert metrics["test_accuracy"] == int8["test_accuracy"]
    assert metrics["model_bytes"] == version.model_file.stat().st_size
    assert {"latency_b1_s", "latency_b64_s", "source_latency_b64_s"} <= set(metrics)
    source = ModelRepository(root / "repo").get(NAME, 1)
    assert version.config == source.config  # same inputs, outputs, preprocessing, labels
    assert version.metadata.architecture_options == source.metadata.architecture_options
    with pytest.raises(RepositoryError, match=f"compressed model .*use its source {NAME}:1"):
        load_published_model(version)


def test_pruning_distillation_and_int4(root: Path, pruned_int4: dict[str, Any]) -> None:
    report = pruned_int4
    assert report["version"] == 3 and report["source"] == f"{NAME}:1"  # not the int8 version 2
    assert report["compression"] == "prune-l1-0.5+distill+int4"
    assert report["parameters"] < 0.5 * report["source_parameters"]  # channels really removed
    assert report["model_bytes"] <= report["source_model_bytes"] / 6
    assert report["epochs_run"] == 3  # 2 fine-tuning + 1 QAT
    assert report["test_accuracy"] > 0.5  # far above chance after 3 epochs
    version = ModelRepository(root / "repo").get(NAME, 3)
    assert _initializer_types(version.model_file) == {TensorProto.INT4}
    lineage = version.metadata.lineage
    assert lineage["compression_distill_from"] == f"{NAME}:1"
    assert lineage["compression_prune"] == "l1" and lineage["compression_sparsity"] == 0.5
    assert {"distillation_alpha", "distillation_temperature"} <= set(lineage)


def test_report_compares_the_original_with_each_version(
    root: Path, int8: dict[str, Any], pruned_int4: dict[str, Any]
) -> None:
    result = CliRunner().invoke(
        cli,
        ["compress", "report", NAME, "--repository", str(root / "repo"), "--json",
         "--latency-seconds", "0.05"],
    )  # fmt: skip
    report = _report(result)
    rows = {row["ref"]: row for row in report["rows"]}
    assert list(rows) == [f"{NAME}:1", f"{NAME}:2", f"{NAME}:3"]
    original, q8, q4 = rows.values()
    assert original["compression"] == "original" and original["size_ratio"] is None
    assert q8["accuracy"] == int8["test_accuracy"]  # the same test split, measured again
    assert q4["accuracy"] == pruned_int4["test_accuracy"]
    assert q8["size_ratio"] == pytest.approx(q8["model_bytes"] / original["model_bytes"])
    assert q4["weights"] < original["weights"] == q8["weights"]
    for row in rows.values():
        assert row["latency_s"]["1"] > 0 and row["latency_s"]["64"] > 0
    table = CliRunner().invoke(
        cli, ["compress", "report", NAME, "--repository", str(root / "repo"),
              "--latency-seconds", "0.05"],
    )  # fmt: skip
    assert table.exit_code == 0, table.output
    assert "prune-l1-0.5+distill+int4" in table.stdout and "b64 ms" in table.stdout


def test_the_compressed_version_is_served(root: Path, pruned_int4: dict[str, Any]) -> None:
    repo = ModelRepository(root / "repo")
    latest = repo.latest(NAME)
    assert latest.version == pruned_int4["version"]
    splits = load_splits("digits", None, 0, 0.1, 0.1)
    assert latest.config.preprocessing is not None
    x = latest.config.preprocessing.apply(splits.test.images[:16])
    (expected,) = session(latest.model_file).run(["logits"], {"input": x})

    async def scenario() -> np.ndarray:
        manager = ModelManager(repo)
        try:
            assert await manager.load(NAME) == [latest.version]
            loaded = manager.get(NAME)
            result = await loaded.batcher.submit({"input": x})
            return result.outputs["logits"]
        finally:
            await manager.close()

    logits = asyncio.run(scenario())
    assert logits.shape == (16, 10)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert (logits.argmax(1) == splits.test.labels[:16]).mean() > 0.5


def test_errors_say_what_to_fix(root: Path, int8: dict[str, Any], tmp_path: Path) -> None:
    repo = ModelRepository(root / "repo")
    five = build_model("lenet5", num_classes=5)
    served = repo.config(NAME)
    outputs = [served.outputs[0].model_copy(update={"dims": [5]})]
    config = served.model_copy(update={"name": "five", "outputs": outputs, "labels": []})
    onnx_file = export_onnx(five, (1, 28, 28), tmp_path / "five.onnx")
    weights = save_weights(five, tmp_path / "five.pt")
    repo.publish(config, onnx_file, architecture="lenet5", extra_files={WEIGHTS_FILE: weights})

    cases: list[tuple[list[str], str]] = [
        (["--quant", "int8", "--distill-from", "five"], "does not fit student.*5 vs 10 classes"),
        (["--quant", "int8", "--distill-from", "nobody"], "teacher 'nobody' not found"),
        (["--prune", "l1", "--sparsity", "1.5"], "sparsity: Input should be less than 1"),
        (["--prune", "l1", "--sparsity", "0"], "sparsity: Input should be greater than 0"),
        (["--quant", "int8", "--from-version", "2"], "already compressed"),
        ([], "nothing to do"),
    ]
    for args, message in cases:
        result = _compress(root, *args)
        assert isinstance(result.exception, ConfigError), (args, result.output)
        assert re.search(message, result.exception.message), result.exception.message
    bad_quant = _compress(root, "--quant", "int2")
    assert bad_quant.exit_code == 2 and "'int2' is not one of 'int8', 'int4'" in bad_quant.output


def test_unknown_model_as_a_user_sees_it(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()  # a repository holding no model (a missing one is named)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "headrace", "compress", "--model", "nope", "--quant", "int8",
         "--repository", str(tmp_path / "repo")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "error: model 'nope' not found; no models are published yet" in done.stderr
