"""No pickle from the repository is ever executed: a weights.pt carrying code is refused,
both when it replaces a published file (sha256) and when it was published as is (weights_only)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from unsafe_files import malicious_weights

from headrace.errors import RepositoryError
from serving.model_config import ModelConfig, TensorSpec
from serving.repository import ModelRepository
from training.models import build_model
from training.published import WEIGHTS_FILE, load_published_model, save_weights


def _config() -> ModelConfig:
    return ModelConfig(
        name="lenet",
        max_batch_size=8,
        inputs=[TensorSpec(name="input", datatype="FP32", dims=[1, 28, 28])],
        outputs=[TensorSpec(name="logits", datatype="FP32", dims=[10])],
    )


def _publish(tmp_path: Path, weights: Path) -> ModelRepository:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not used by these tests")
    repo = ModelRepository(tmp_path / "repo")
    repo.publish(_config(), onnx_file, architecture="lenet5", extra_files={WEIGHTS_FILE: weights})
    return repo


def test_the_payload_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "proof"
    path = malicious_weights(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert marker.read_text() == "code ran"
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError):  # and what weights_only does with it
        torch.load(path, weights_only=True)
    assert not marker.exists()


def test_a_swapped_weights_file_is_refused_by_its_sha256(tmp_path: Path) -> None:
    good = save_weights(build_model("lenet5"), tmp_path / "good.pt")
    repo = _publish(tmp_path, good)
    version = repo.get("lenet", 1)
    marker = tmp_path / "marker"
    malicious_weights(version.path / WEIGHTS_FILE, marker)
    with pytest.raises(RepositoryError, match="sha256"):
        load_published_model(version)
    assert not marker.exists()


def test_a_published_pickle_with_a_matching_sha256_is_refused_by_weights_only(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    repo = _publish(tmp_path, malicious_weights(tmp_path / "evil.pt", marker))
    version = repo.get("lenet", 1)
    version.verify()  # the integrity check passes: this file is what was published
    with pytest.raises(RepositoryError, match="not a plain tensor file and was not loaded"):
        load_published_model(version)
    assert not marker.exists()
