"""ONNX export: dynamic batch axis, parity with torch at batch 1 and 64, mismatches refused."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from headrace.errors import ExportMismatch
from training.export import export_onnx, max_abs_difference, verify_onnx
from training.models import build_model, input_shape


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_onnx_matches_torch_at_batch_1_and_64(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    shape = input_shape(name)
    if name == "resnet20":  # non-trivial batch-norm statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(32, *shape))
    path = export_onnx(model, shape, tmp_path / "model.onnx")
    diffs = max_abs_difference(model, path, shape, batch_sizes=(1, 64))
    assert set(diffs) == {1, 64}
    assert max(diffs.values()) < 1e-4
    assert verify_onnx(model, path, shape) < 1e-4


def test_batch_axis_is_dynamic(tmp_path: Path) -> None:
    path = export_onnx(build_model("lenet5"), (1, 28, 28), tmp_path / "m.onnx")
    (inp,) = ort.InferenceSession(str(path)).get_inputs()
    assert inp.name == "input"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 28, 28]


def test_export_keeps_training_mode(tmp_path: Path) -> None:
    model = build_model("lenet5").train()
    export_onnx(model, (1, 28, 28), tmp_path / "m.onnx")
    assert model.training


def test_mismatch_is_refused(tmp_path: Path) -> None:
    model = build_model("lenet5")
    path = export_onnx(model, (1, 28, 28), tmp_path / "m.onnx")
    with torch.no_grad():
        model.classifier[-1].bias.add_(0.01)
    with pytest.raises(ExportMismatch, match="not published"):
        verify_onnx(model, path, (1, 28, 28))


def test_large_outputs_are_checked_relative_to_their_size(tmp_path: Path) -> None:
    """A model with logits in the tens of thousands (a diverging DP run) differs from its
    own export by float32 rounding far above 1e-4: no export error. A real difference of
    1% still is one."""
    torch.manual_seed(0)
    model = build_model("lenet5")
    with torch.no_grad():
        model.classifier[-1].weight.mul_(1e5)
    path = export_onnx(model, (1, 28, 28), tmp_path / "m.onnx")
    assert max(max_abs_difference(model, path, (1, 28, 28)).values()) > 1e-4
    verify_onnx(model, path, (1, 28, 28))
    with torch.no_grad():
        model.classifier[-1].weight.mul_(1.01)
    with pytest.raises(ExportMismatch, match="relative to the largest output"):
        verify_onnx(model, path, (1, 28, 28))
