"""QAT with NNI and the QDQ export: integer initializers, ONNX Runtime runs them, sizes shrink."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, numpy_helper
from torch import nn

from headrace.errors import CompressionError, ExportMismatch
from training.compression.onnx_export import (
    INT4_OPSET,
    MIN_TOLERANCE,
    allowed_difference,
    export_quantized,
    judge_export,
    session,
    verify_quantized,
)
from training.compression.quantization import FakeQuantLayer, QatSession
from training.datasets import load_splits
from training.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from training.models import build_model

pytestmark = pytest.mark.filterwarnings(  # inside NNI's QAT autograd function
    "ignore:'saved_variables' is deprecated:DeprecationWarning"
)
SHAPE = (1, 28, 28)
INTEGER_TYPE = {8: TensorProto.INT8, 4: TensorProto.INT4}


def _qat_model(bits: int) -> tuple[nn.Module, QatSession]:
    """LeNet-5 wrapped by NNI's QATQuantizer, a few SGD steps on random data, then exported."""
    torch.manual_seed(0)
    model = build_model("lenet5").train()
    qat = QatSession(model, bits)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        x, y = torch.randn(16, *SHAPE), torch.randint(0, 10, (16,))
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return qat.export_model(), qat


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[nn.Module, Path]]:
    folder = tmp_path_factory.mktemp("qdq")
    out = {}
    for bits in (8, 4):
        model, _ = _qat_model(bits)
        out[bits] = (model, export_quantized(model, SHAPE, folder / f"int{bits}.onnx", bits))
    return out


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fp32")
    return export_onnx(build_model("lenet5"), SHAPE, folder / "fp32.onnx")


@pytest.mark.parametrize("bits", [8, 4])
def test_weights_are_stored_as_integer_initializers(exported, bits: int) -> None:
    proto = onnx.load(str(exported[bits][1]))
    inits = {t.name: t for t in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    layers = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 5
    for layer in layers:
        dequant = producers[layer.input[1]]  # the weight input comes from a dequantizer ...
        assert dequant.op_type == "DequantizeLinear"
        weight = inits[dequant.input[0]]  # ... of an integer initializer
        assert weight.data_type == INTEGER_TYPE[bits]
        assert inits[dequant.input[2]].data_type == INTEGER_TYPE[bits]  # zero point alike
        if bits == 4:  # two values per byte
            assert len(weight.raw_data) == (int(np.prod(weight.dims)) + 1) // 2
    # no float weight matrix is left (only the 1-D float biases)
    assert all(len(t.dims) <= 1 for t in inits.values() if t.data_type == TensorProto.FLOAT)
    # layer inputs are fake-quantized too (uint8), so QuantizeLinear nodes remain for them
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) == 5
    opset = {o.domain: o.version for o in proto.opset_import}[""]
    assert opset == (INT4_OPSET if bits == 4 else 17)
    onnx.checker.check_model(proto, full_check=True)


@pytest.mark.parametrize("bits", [8, 4])
def test_onnx_runtime_matches_the_torch_fake_quant_model(exported, bits: int) -> None:
    model, path = exported[bits]
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    (actual,) = session(path).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    assert np.abs(actual - expected).max() < 0.05
    assert (actual.argmax(1) == expected.argmax(1)).mean() >= 0.98
    assert verify_quantized(model, path, [x[:1], x], tolerance=0.05) < 0.05


def test_packed_int4_values_are_the_trained_integers(exported) -> None:
    model, path = exported[4]
    layer = model.get_submodule("classifier.1")
    assert isinstance(layer, FakeQuantLayer)
    expected = torch.round(layer.layer.weight / layer.quant.weight.scale).to(torch.int64)
    assert int(expected.abs().max()) <= 7  # NNI's symmetric int4 range
    proto = onnx.load(str(path))
    [packed] = [t for t in proto.graph.initializer if list(t.dims) == [120, 400]]
    stored = numpy_helper.to_array(packed).astype(np.int64)
    np.testing.assert_array_equal(stored, expected.numpy())


def test_quantized_files_are_far_smaller_than_float32(exported, fp32_file: Path) -> None:
    fp32 = fp32_file.stat().st_size
    assert exported[8][1].stat().st_size <= fp32 / 3.5
    assert exported[4][1].stat().st_size <= fp32 / 6


def test_nni_quantizer_ranges_and_grid() -> None:
    model, qat = _qat_model(4)
    quant = qat.layer_quant()
    assert set(quant) == {
        "features.0",
        "features.3",
        "classifier.1",
        "classifier.3",
        "classifier.5",
    }
    for layer in quant.values():
        assert (layer.weight.qmin, layer.weight.qmax, layer.weight.zero_point) == (-7, 7, 0)
        assert layer.input is not None and (layer.input.qmin, layer.input.qmax) == (0, 255)
    conv = model.get_submodule("features.0")
    assert isinstance(conv, FakeQuantLayer)
    steps = conv.layer.weight / conv.quant.weight.scale
    assert torch.allclose(steps, torch.round(steps), atol=1e-4)  # weights sit on the grid


def test_weights_trained_for_int8_do_not_fit_int4(exported, tmp_path: Path) -> None:
    model, _ = exported[8]
    with pytest.raises(ExportMismatch, match="outside the 4-bit range"):
        export_quantized(model, SHAPE, tmp_path / "bad.onnx", 4)


def test_a_float_model_has_nothing_to_store_as_integers(tmp_path: Path) -> None:
    with pytest.raises(ExportMismatch, match="no quantized weights"):
        export_quantized(build_model("lenet5"), SHAPE, tmp_path / "plain.onnx", 8)


def test_a_model_without_conv_or_linear_is_refused() -> None:
    with pytest.raises(CompressionError, match="no Conv2d or Linear"):
        QatSession(nn.Sequential(nn.Flatten()), 8)


def test_verify_refuses_a_file_of_another_model(exported) -> None:
    model, path = exported[8]
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.classifier[5].layer.bias += 1.0  # every logit moves by 1
    x = torch.randn(8, *SHAPE)
    with pytest.raises(ExportMismatch, match="differs from the torch"):
        verify_quantized(other, path, [x], tolerance=0.05)


# -- the check on near-untrained models, whose logits nearly tie -------------------------------


def _digits(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images.astype("float32")) / 255.0 - 0.5) / 0.5


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[nn.Module, Path]]:
    """Freshly initialised LeNet-5s, QAT scales from one forward pass on digits, exported.

    Seeds picked so that int4 has an input (test digit 135) whose two best logits are
    0.0005 apart, which ONNX Runtime (off by 0.0005 there) ranks the other way round.
    """
    folder = tmp_path_factory.mktemp("fresh")
    train = load_splits("digits", None, 0, 0.1, 0.1).train
    out = {}
    for bits, seed in ((8, 0), (4, 91)):
        torch.manual_seed(seed)
        model = build_model("lenet5").train()
        qat = QatSession(model, bits)
        with torch.no_grad():
            model(_digits(train.images[:64]))
        exported = qat.export_model()
        out[bits] = (exported, export_quantized(exported, SHAPE, folder / f"{bits}.onnx", bits))
    return out


def test_near_tied_logits_ranked_the_other_way_round_are_no_mismatch(fresh) -> None:
    model, path = fresh[4]
    x = _digits(load_splits("digits", None, 0, 0.1, 0.1).test.images[120:152])
    with torch.no_grad():
        expected = model(x).numpy()
    (actual,) = session(path).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    flipped = actual.argmax(1) != expected.argmax(1)
    assert flipped.sum() == 1  # 97% agreement: refused before
    top2 = np.sort(expected[flipped][0])[-2:]
    assert top2[1] - top2[0] < 0.001
    assert verify_quantized(model, path, [x], tolerance=0.05) < 0.001


def test_classes_count_only_where_the_margin_exceeds_the_allowed_error() -> None:
    rng = np.random.default_rng(0)
    expected = rng.normal(0, 0.05, (100, 10)).astype(np.float32)
    expected[:, 0] = expected.max(1) + 0.02  # class 0 clearly first ...
    expected[:5, 1] = expected[:5, 0] - 0.002  # ... but for 5 rows nearly tied with class 1
    actual = expected.copy()
    actual[:5, 1] += 0.003  # within the allowed error; class 1 now wins those rows
    assert judge_export(expected, actual, tolerance=0.05) == pytest.approx(0.003)
    decided = expected.copy()
    decided[:5, 1] = expected[:5, 0] - 1.5 * MIN_TOLERANCE  # further apart than allowed ...
    assert allowed_difference(decided, tolerance=0.05) == MIN_TOLERANCE
    moved = decided.copy()
    moved[:5, 1] += 0.9 * MIN_TOLERANCE  # ... each logit within the allowed error,
    moved[:5, 0] -= 0.9 * MIN_TOLERANCE  # yet class 1 first: a mismatch
    with pytest.raises(ExportMismatch, match="same class on 95.0% of the 100 of 100 inputs"):
        judge_export(decided, moved, tolerance=0.05)


def _edited(path: Path, out: Path, layer: int, edit: str) -> Path:
    """A copy of a QDQ file with a weight's scale x1.25 or its first two output channels swapped."""
    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    constants = {n.output[0]: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant"}
    weights = [
        n for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and len(inits.get(n.input[0], TensorProto()).dims) >= 2
    ]  # fmt: skip
    node = weights[layer]
    if edit == "scale":
        tensor = inits.get(node.input[1]) or constants[node.input[1]]
        value = numpy_helper.to_array(tensor) * np.float32(1.25)
    else:
        tensor = inits[node.input[0]]
        value = numpy_helper.to_array(tensor).copy()
        value[[0, 1]] = value[[1, 0]]
    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(("layer", "edit"), [(0, "scale"), (2, "scale"), (1, "swap"), (3, "swap")])
def test_a_broken_export_of_a_near_untrained_model_is_refused(
    fresh, tmp_path: Path, bits: int, layer: int, edit: str
) -> None:
    model, path = fresh[bits]
    broken = _edited(path, tmp_path / "broken.onnx", layer, edit)
    x = _digits(load_splits("digits", None, 0, 0.1, 0.1).test.images)
    noise = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(0))
    assert verify_quantized(model, path, [x, noise], tolerance=0.05) < 0.002
    with pytest.raises(ExportMismatch, match="differs from the torch fake-quantized model"):
        verify_quantized(model, broken, [x, noise], tolerance=0.05)
