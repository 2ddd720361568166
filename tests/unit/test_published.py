"""Torch weights published beside the ONNX file load back exactly, and only when untampered."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headrace.errors import RepositoryError
from serving.model_config import ModelConfig, TensorSpec
from serving.repository import ModelRepository
from training.models import build_model
from training.published import WEIGHTS_FILE, load_published_model, save_weights


def _publish(tmp_path: Path, with_weights: bool = True) -> tuple[ModelRepository, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("lenet5", 10, in_channels=1, image_size=28).eval()
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not used by these tests")
    config = ModelConfig(
        name="lenet",
        max_batch_size=8,
        inputs=[TensorSpec(name="input", datatype="FP32", dims=[1, 28, 28])],
        outputs=[TensorSpec(name="logits", datatype="FP32", dims=[10])],
    )
    extra = {WEIGHTS_FILE: save_weights(model, tmp_path / WEIGHTS_FILE)} if with_weights else {}
    repo = ModelRepository(tmp_path / "repo")
    repo.publish(config, onnx_file, architecture="lenet5", extra_files=extra)
    return repo, model


def test_published_weights_load_back_exactly(tmp_path: Path) -> None:
    repo, model = _publish(tmp_path)
    loaded = load_published_model(repo.get("lenet", 1))
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    repo, _ = _publish(tmp_path)
    version = repo.get("lenet", 1)
    weights = version.path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RepositoryError, match="sha256"):
        load_published_model(version)


def test_version_without_weights_says_so(tmp_path: Path) -> None:
    repo, _ = _publish(tmp_path, with_weights=False)
    with pytest.raises(RepositoryError, match="no weights.pt"):
        load_published_model(repo.get("lenet", 1))
