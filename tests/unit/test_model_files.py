"""Safe loading: ONNX external data must be a published file inside the version folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from unsafe_files import (
    WEIGHTS,
    constant_node_model,
    external_data_model,
    function_default_model,
    write_weights,
)

from headrace.errors import ModelLoadError, UnsafeModel
from security.model_files import check_version_files, external_locations


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(version folder, a secret file beside it that no model may read)."""
    folder = tmp_path / "repo" / "m" / "1"
    folder.mkdir(parents=True)
    secret = write_weights(tmp_path / "repo" / "secret.bin")
    return folder, secret


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_external_data_inside_the_folder_and_recorded_is_accepted(layout) -> None:
    folder, _ = layout
    write_weights(folder / "w.bin")
    model = external_data_model(folder / "model.onnx", "w.bin")
    check_version_files(folder, "model.onnx", {"model.onnx", "w.bin"})
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.zeros((1, 4), np.float32)})[0]
    assert np.array_equal(out[0], WEIGHTS)  # the weights really came from w.bin


def test_a_model_without_external_data_passes(layout) -> None:
    folder, _ = layout
    from training.export import export_onnx
    from training.models import build_model

    export_onnx(build_model("lenet5"), (1, 28, 28), folder / "model.onnx")
    assert external_locations(folder / "model.onnx") == []
    check_version_files(folder, "model.onnx", {"model.onnx"})


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("../secret.bin", "'..' component"),
        ("a/../../secret.bin", "'..' component"),
        ("ABSOLUTE", "absolute path"),
        ("..\\secret.bin", "backslash"),
        ("", "no location"),
        ("missing.bin", "does not exist"),
        ("*/_ORT_MEM_ADDR_/*", "does not exist"),
    ],
)
def test_locations_reaching_out_are_refused(layout, location: str, why: str) -> None:
    folder, secret = layout
    if location == "ABSOLUTE":
        location = str(secret)
    external_data_model(folder / "model.onnx", location)
    before = files_under(folder.parents[2])
    with pytest.raises(UnsafeModel, match=why) as caught:
        check_version_files(folder, "model.onnx", {"model.onnx"})
    assert isinstance(caught.value, ModelLoadError)  # the manager's refusal path handles it
    assert "re-export" in caught.value.message
    assert files_under(folder.parents[2]) == before  # nothing created anywhere


def test_a_symlink_out_of_the_folder_is_refused(layout) -> None:
    folder, secret = layout
    os.symlink(secret, folder / "w.bin")
    external_data_model(folder / "model.onnx", "w.bin")
    with pytest.raises(UnsafeModel, match="symlink"):
        check_version_files(folder, "model.onnx", {"model.onnx"})


def test_a_symlinked_subfolder_is_refused(layout) -> None:
    folder, secret = layout
    os.symlink(secret.parent, folder / "sub")
    external_data_model(folder / "model.onnx", "sub/secret.bin")
    with pytest.raises(UnsafeModel, match="symlink"):
        check_version_files(folder, "model.onnx", {"model.onnx"})


def test_a_symlinked_recorded_file_is_refused(layout) -> None:
    folder, secret = layout
    external_data_model(folder / "real.onnx", "w.bin")
    os.symlink(folder / "real.onnx", folder / "model.onnx")
    with pytest.raises(UnsafeModel, match="model.onnx is a symlink"):
        check_version_files(folder, "model.onnx", {"model.onnx"})


def test_external_data_not_recorded_at_publish_is_refused(layout) -> None:
    folder, _ = layout
    write_weights(folder / "w.bin")  # dropped in later: its sha256 was never recorded
    external_data_model(folder / "model.onnx", "w.bin")
    with pytest.raises(UnsafeModel, match="sha256 was recorded"):
        check_version_files(folder, "model.onnx", {"model.onnx"})


def test_external_tensors_in_node_attributes_are_found(layout) -> None:
    folder, _ = layout
    constant_node_model(folder / "model.onnx", "../secret.bin")
    assert external_locations(folder / "model.onnx") == [("w_value", "../secret.bin")]
    with pytest.raises(UnsafeModel, match="w_value"):
        check_version_files(folder, "model.onnx", {"model.onnx"})


def test_external_tensors_in_function_attribute_defaults_are_found(layout) -> None:
    """A local function's attribute default was not walked: ONNX Runtime inlines it and
    reads its data (here a file dropped in after publish, never covered by a sha256)."""
    folder, _ = layout
    write_weights(folder / "w.bin")
    model = function_default_model(folder / "model.onnx", "w.bin")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.zeros((1, 4), np.float32)})[0]
    assert np.array_equal(out[0], WEIGHTS)  # the runtime really reads w.bin
    assert external_locations(model) == [("w_default", "w.bin")]
    with pytest.raises(UnsafeModel, match="sha256 was recorded"):
        check_version_files(folder, "model.onnx", {"model.onnx"})


def test_a_file_that_is_not_onnx_is_refused(layout) -> None:
    folder, _ = layout
    (folder / "model.onnx").write_bytes(b"\xff\xfenot a protobuf at all")
    with pytest.raises(ModelLoadError, match="cannot be parsed") as caught:
        check_version_files(folder, "model.onnx", {"model.onnx"})
    assert not isinstance(caught.value, UnsafeModel)  # broken, not malicious


def test_the_runner_refuses_it_for_any_caller(layout) -> None:
    """OnnxModel checks on its own, so paths that skip the model manager are covered too."""
    from serving.runner import OnnxModel

    folder, secret = layout
    os.symlink(secret, folder / "w.bin")
    with pytest.raises(UnsafeModel, match="symlink"):
        OnnxModel(external_data_model(folder / "model.onnx", "w.bin"))
    (folder / "w.bin").unlink()
    write_weights(folder / "w.bin")
    runner = OnnxModel(folder / "model.onnx")
    out = runner.run({"input": np.zeros((1, 4), np.float32)})["output"]
    assert np.array_equal(out[0], WEIGHTS)
    runner.close()
