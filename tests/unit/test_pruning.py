"""Channel pruning: NNI's masks turned into physically smaller plain-torch models."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from headrace.errors import CompressionError, ConfigError
from training.compression.pruning import (
    channel_masks,
    count_parameters,
    fit_to_state_dict,
    masked_copy,
    prunable_layers,
    prune_channels,
)
from training.export import INPUT_NAME, OUTPUT_NAME, export_onnx, verify_onnx
from training.models import build_model


def _inputs(shape: tuple[int, ...], batch: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


def _trained_like_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 2 - 1)
    return model


def _nni_masked_outputs(
    model: nn.Module, excluded: str, sparsity: float, method: str, x: torch.Tensor
) -> torch.Tensor:
    """Outputs of NNI's own masked (wrapped) model, computed independently of our code."""
    from nni.compression.pruning import L1NormPruner, L2NormPruner

    work = copy.deepcopy(model).eval()
    pruner_class = L1NormPruner if method == "l1" else L2NormPruner
    config: list[dict[str, object]] = [
        {"op_types": ["Conv2d", "Linear"], "exclude_op_names": [excluded], "sparse_ratio": sparsity}
    ]
    pruner = pruner_class(work, config)
    pruner.compress()
    with torch.no_grad():
        return work(x)


def test_lenet5_at_half_sparsity_loses_half_of_every_hidden_layer() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5")
    pruned: Any = prune_channels(model, 0.5, _inputs((1, 28, 28)))  # Any: reach into layers
    conv1, conv2 = pruned.features[0], pruned.features[3]
    fc1, fc2, fc3 = pruned.classifier[1], pruned.classifier[3], pruned.classifier[5]
    assert (conv1.in_channels, conv1.out_channels) == (1, 3)
    assert (conv2.in_channels, conv2.out_channels) == (3, 8)
    assert (fc1.in_features, fc1.out_features) == (8 * 5 * 5, 60)
    assert (fc2.in_features, fc2.out_features) == (60, 42)
    assert (fc3.in_features, fc3.out_features) == (42, 10)  # the classes stay
    before, after = count_parameters(model), count_parameters(pruned)
    assert before == 61706 and after == 15738  # ~ (1 - 0.5)^2 of the original
    assert 0.2 < after / before < 0.3


@pytest.mark.parametrize(
    ("name", "output_layer"), [("lenet5", "classifier.5"), ("lenet5-wide", "classifier.3")]
)
@pytest.mark.parametrize("method", ["l1", "l2"])
def test_pruned_model_gives_nni_masked_model_outputs(
    name: str, output_layer: str, method: str
) -> None:
    torch.manual_seed(1)
    model = build_model(name).eval()
    x = _inputs((1, 28, 28), batch=32, seed=2)
    original_state = copy.deepcopy(model.state_dict())
    pruned = prune_channels(model, 0.5, x[:4], method=method).eval()  # type: ignore[arg-type]
    expected = _nni_masked_outputs(model, output_layer, 0.5, method, x)
    with torch.no_grad():
        actual = pruned(x)
        unpruned = model(x)
    assert float((actual - expected).abs().max()) < 1e-5
    assert float((unpruned - expected).abs().max()) > 1e-3  # the masks did change the model
    assert count_parameters(pruned) < 0.3 * count_parameters(model)
    for key, value in model.state_dict().items():  # the caller's model is left alone
        assert torch.equal(value, original_state[key])
    assert all(type(m).__module__.startswith("torch.") for m in pruned.modules() if m is not pruned)


def test_l1_and_l2_choose_by_their_own_norm() -> None:
    model: Any = build_model("lenet5-wide").eval()
    layers = prunable_layers(model, _inputs((1, 28, 28), batch=2)).layers
    with torch.no_grad():  # (L1, L2) norms: channel 0 (2.5, 0.5), 1 (1.0, 1.0), others (1.4, 0.7)
        conv = model.features[0]
        conv.bias.zero_()
        conv.weight.zero_()
        conv.weight[:, 0, 0, :4] = 0.35
        conv.weight[0] = 0.1
        conv.weight[1] = 0.0
        conv.weight[1, 0, 0, 0] = 1.0
    l1 = channel_masks(model, layers, 0.5, "l1")["features.0"]
    l2 = channel_masks(model, layers, 0.5, "l2")["features.0"]
    assert int(l1.sum()) == int(l2.sum()) == 8
    assert bool(l1[0]) and not bool(l1[1])  # smallest L1 norm: channel 1
    assert bool(l2[1]) and not bool(l2[0])  # smallest L2 norm: channel 0


def test_resnet20_prunes_block_inner_channels_with_their_batchnorm() -> None:
    torch.manual_seed(0)
    model = _trained_like_batchnorms(build_model("resnet20")).eval()
    x = _inputs((3, 32, 32), batch=8)
    graph = prunable_layers(model, x)
    assert [layer.name for layer in graph.layers] == [f"stages.{i}.conv1" for i in range(9)]
    assert "residual" in graph.kept_whole["stages.0.conv2"]
    assert "output" in graph.kept_whole["head.2"]
    pruned: Any = prune_channels(model, 0.5, x).eval()
    block = pruned.stages[0]
    assert block.conv1.out_channels == 8 and block.bn1.num_features == 8
    assert block.conv2.in_channels == 8 and block.conv2.out_channels == 16
    keep = channel_masks(model, graph.layers, 0.5)
    reference = masked_copy(model, graph.layers, keep).eval()
    with torch.no_grad():
        assert float((pruned(x) - reference(x)).abs().max()) < 1e-5
    assert 0.45 < count_parameters(pruned) / count_parameters(model) < 0.55


def test_pruned_model_exports_to_onnx_with_the_same_outputs(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_model("lenet5").eval()
    x = _inputs((1, 28, 28), batch=64, seed=4)
    pruned = prune_channels(model, 0.5, x[:4])
    path = export_onnx(pruned, (1, 28, 28), tmp_path / "pruned.onnx")
    assert verify_onnx(pruned, path, (1, 28, 28)) <= 1e-5
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    expected = _nni_masked_outputs(model, "classifier.5", 0.5, "l1", x).numpy()
    assert float(np.abs(np.asarray(actual) - expected).max()) < 1e-5
    initializers = sum(int(np.prod(i.dims)) for i in onnx.load(path).graph.initializer)
    assert initializers == count_parameters(pruned)  # the ONNX file holds the smaller layers


def test_pruned_model_fine_tunes_and_round_trips_its_state_dict() -> None:
    model = build_model("lenet5-wide", dropout=0.2)
    x = _inputs((1, 28, 28), batch=8)
    pruned = prune_channels(model, 0.5, x)
    assert pruned.training  # the copy keeps the caller's mode
    loss = nn.functional.cross_entropy(pruned(x), torch.arange(8))
    loss.backward()
    assert all(p.grad is not None for p in pruned.parameters())
    again = prune_channels(model, 0.5, x)
    again.load_state_dict(pruned.state_dict())


@pytest.mark.parametrize(("name", "shape"), [("lenet5", (1, 28, 28)), ("resnet20", (3, 32, 32))])
def test_saved_pruned_weights_load_into_a_fresh_model_fitted_to_them(
    name: str, shape: tuple[int, ...], tmp_path: Path
) -> None:
    torch.manual_seed(5)
    x = _inputs(shape, batch=4)
    pruned = prune_channels(_trained_like_batchnorms(build_model(name)), 0.5, x).eval()
    torch.save(pruned.state_dict(), tmp_path / "weights.pt")
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    fresh = build_model(name)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(state)
    loaded = fit_to_state_dict(fresh, state)
    loaded.load_state_dict(state)
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert count_parameters(loaded) == count_parameters(pruned)
    with pytest.raises(CompressionError, match="not a pruned copy"):
        fit_to_state_dict(pruned, build_model(name).state_dict())


def test_high_sparsity_keeps_at_least_one_channel_per_layer() -> None:
    pruned: Any = prune_channels(build_model("lenet5"), 0.99, _inputs((1, 28, 28), batch=2))
    assert pruned.features[0].out_channels >= 1 and pruned.classifier[3].out_features >= 1
    assert pruned(_inputs((1, 28, 28), batch=2)).shape == (2, 10)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_zero_one_is_refused(sparsity: float) -> None:
    with pytest.raises(ConfigError, match=r"sparsity must be in \(0, 1\)"):
        prune_channels(build_model("lenet5"), sparsity, _inputs((1, 28, 28), batch=2))


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ConfigError, match="'l1' or 'l2'"):
        prune_channels(build_model("lenet5"), 0.5, _inputs((1, 28, 28)), method="l3")  # type: ignore[arg-type]


class _OnlyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on data: torch.fx cannot trace it
            x = -x
        return self.fc2(torch.relu(self.fc1(x)))


class _SigmoidHidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.sigmoid(self.fc1(x)))  # sigmoid(0) = 0.5: a cut unit still counts


def test_architectures_without_prunable_channels_get_a_clear_error() -> None:
    x = torch.randn(2, 4)
    with pytest.raises(CompressionError, match="no layer whose channels can be removed.*output"):
        prune_channels(_OnlyClassifier(), 0.5, x)
    with pytest.raises(CompressionError, match="cannot trace _DataDependent with torch.fx"):
        prune_channels(_DataDependent(), 0.5, x)
    with pytest.raises(CompressionError, match="sigmoid"):
        prune_channels(_SigmoidHidden(), 0.5, x)


def test_wrong_example_input_shape_is_a_clear_error() -> None:
    with pytest.raises(CompressionError, match=r"input of shape \(2, 3, 32, 32\).*3 channels"):
        prune_channels(build_model("lenet5"), 0.5, torch.randn(2, 3, 32, 32))
