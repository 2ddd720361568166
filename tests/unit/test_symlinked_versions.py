"""A model folder, version folder or published file that is a symlink is refused: through one,
the server (or a job reading torch weights) would load a model from anywhere its account can
read (here: a private repository the repository's writer cannot read) and serve it as one of
this repository's. Each consistent with its metadata.json, so the sha256 check alone passed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from unsafe_files import identity_model

from headrace.errors import UnsafeModel
from serving.model_config import ModelConfig, TensorSpec
from serving.model_manager import ModelManager
from serving.repository import ModelRepository
from training.models import build_model
from training.published import WEIGHTS_FILE, load_published_model, save_weights


def _config(name: str) -> ModelConfig:
    return ModelConfig(
        name=name,
        max_batch_size=4,
        inputs=[TensorSpec(name="input", dims=[4])],
        outputs=[TensorSpec(name="out", dims=[4])],
    )


def _publish(root: Path, name: str, tmp_path: Path) -> None:
    """Publish an identity model as `name`."""
    model_file = identity_model(tmp_path / "identity.onnx")
    ModelRepository(root).publish(_config(name), model_file, architecture="test")


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    """(the served repository with model 'good', a private one with model 'secret')."""
    served, private = tmp_path / "served", tmp_path / "private"
    _publish(served, "good", tmp_path)
    _publish(private, "secret", tmp_path)
    return served, private


def _load(root: Path) -> tuple[dict[str, list[int]], list[tuple[str, int, str]]]:
    refused: list[tuple[str, int, str]] = []

    async def run() -> dict[str, list[int]]:
        manager = ModelManager(
            ModelRepository(root),
            batching=False,
            on_load_failure=lambda *failure: refused.append(failure),
        )
        await manager.load_all()
        loaded = manager.loaded()
        await manager.close()
        return loaded

    return asyncio.run(run()), refused


def test_a_symlinked_model_or_version_folder_is_refused(repos: tuple[Path, Path]) -> None:
    served, private = repos
    (served / "secret").symlink_to(private / "secret")  # the model folder
    (served / "copied").mkdir()  # a real model folder whose version folder is a link
    config = _config("copied").model_dump_json()
    (served / "copied" / "config.json").write_text(config)
    (served / "copied" / "1").symlink_to(private / "secret" / "1")
    loaded, refused = _load(served)
    assert loaded == {"good": [1]}
    assert sorted(refused) == [("copied", 1, "unsafe_model"), ("secret", 1, "unsafe_model")]


def test_a_symlinked_weights_file_is_refused(tmp_path: Path) -> None:
    config = ModelConfig(
        name="lenet",
        inputs=[TensorSpec(name="input", dims=[1, 28, 28])],
        outputs=[TensorSpec(name="logits", dims=[10])],
    )
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not read by these jobs")
    weights = save_weights(build_model("lenet5"), tmp_path / "weights.pt")
    published = []
    for root in (tmp_path / "served", tmp_path / "private"):
        repository = ModelRepository(root)
        extra = {WEIGHTS_FILE: weights}
        published.append(
            repository.publish(config, onnx_file, architecture="lenet5", extra_files=extra)
        )
    version, private = published
    assert load_published_model(version) is not None
    (version.path / WEIGHTS_FILE).unlink()
    (version.path / WEIGHTS_FILE).symlink_to(private.path / WEIGHTS_FILE)  # same sha256
    with pytest.raises(UnsafeModel, match=f"{WEIGHTS_FILE} is a symlink"):
        load_published_model(version)
