"""Channel pruning that really removes channels: NNI picks them, we rebuild smaller layers.

`prune_channels(model, 0.5, example_input)` returns a new, plain-torch model with
fewer convolution output channels and hidden units (and the next layer's inputs,
and any BatchNorm in between, cut to match): fewer parameters and less compute,
no NNI at inference, exportable with `training/export.py`.

How:
1. `channel_graph.analyse` finds, on the torch.fx graph, the Conv2d / Linear
   layers whose output channels can go (see there: not the output layer, not the
   channels residual connections add together).
2. NNI's `L1NormPruner` / `L2NormPruner` (nni.compression.pruning) compute
   per-output-channel masks for those layers with `sparse_ratio = sparsity`.
3. We rebuild those layers from the masks (`_rebuild`), and check on the example
   input that the smaller model gives the masked model's outputs.

Why not NNI's `ModelSpeedup` (which works here given a torch.fx graph module):
it matches the masked model on LeNet-5, but on a network with BatchNorm after a
pruned convolution it silently drops the BatchNorm's shift of the removed
channels (beta - gamma * mean / std, non-zero once trained) and its output
changes (by ~1.0 on a ResNet-20 with trained-like statistics), and it logs
errors for ResNet's identity shortcuts. The rebuild here is ~100 lines, exact,
and refuses what it cannot do.

"Masked model" (`masked_copy`) means: the pruned layers' weight rows and biases
zeroed as NNI's mask does, and BatchNorm channels after them zeroed as well (a
removed channel is gone as a whole). Without BatchNorm this is exactly NNI's
masked model.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from headrace.errors import CompressionError, ConfigError
from training.compression.channel_graph import ChannelGraph, PrunableLayer, analyse

PruningMethod = Literal["l1", "l2"]
TOLERANCE = 1e-5

__all__ = [
    "PruningMethod",
    "channel_masks",
    "count_parameters",
    "fit_to_state_dict",
    "masked_copy",
    "prunable_layers",
    "prune_channels",
]


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements of `model` (trainable or not)."""
    return sum(parameter.numel() for parameter in model.parameters())


def _check_arguments(sparsity: float, method: str) -> None:
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(
            f"sparsity must be in (0, 1) (the fraction of channels to remove), got {sparsity}"
        )
    if method not in ("l1", "l2"):
        raise ConfigError(f"pruning method must be 'l1' or 'l2', got {method!r}")


def prunable_layers(model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """The layers `prune_channels` would cut, and why the others stay whole."""
    work = copy.deepcopy(model).eval()
    return analyse(work, example_input)


def channel_masks(
    model: nn.Module,
    layers: tuple[PrunableLayer, ...],
    sparsity: float,
    method: PruningMethod = "l1",
) -> dict[str, torch.Tensor]:
    """Which output channels each layer keeps (bool per channel), chosen by NNI's norm pruner.

    NNI wraps the modules it prunes, so it works on a throwaway copy of `model`.
    """
    _check_arguments(sparsity, method)
    from nni.compression.pruning import L1NormPruner, L2NormPruner  # slow import: only here

    pruner_class = L1NormPruner if method == "l1" else L2NormPruner
    work = copy.deepcopy(model).eval()
    config_list = [
        {
            "op_types": ["Conv2d", "Linear"],
            "op_names": [layer.name for layer in layers],
            "sparse_ratio": sparsity,
        }
    ]
    pruner = pruner_class(work, config_list)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    keep: dict[str, torch.Tensor] = {}
    for layer in layers:
        weight_mask = masks[layer.name]["weight"]
        channel_kept = weight_mask.detach().flatten(1).amax(dim=1) > 0
        if not bool(channel_kept.any()):  # never remove every channel: keep the strongest
            weight = _weight_layer(model, layer.name).weight.detach().flatten(1)
            channel_kept[int(weight.abs().sum(dim=1).argmax())] = True
        keep[layer.name] = channel_kept.cpu()
    return keep


def _weight_layer(model: nn.Module, name: str) -> nn.Conv2d | nn.Linear:
    module = model.get_submodule(name)
    assert isinstance(module, nn.Conv2d | nn.Linear), name  # channel_graph found it so
    return module


def _batchnorm(model: nn.Module, name: str) -> nn.BatchNorm1d | nn.BatchNorm2d:
    module = model.get_submodule(name)
    assert isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d), name  # channel_graph found it so
    return module


def _input_index(layer: PrunableLayer, kept: torch.Tensor) -> torch.Tensor:
    """Indices of the consumer's inputs that survive when `kept` channels of `layer` remain."""
    channels = kept.nonzero().flatten()
    offsets = torch.arange(layer.positions)
    return (channels[:, None] * layer.positions + offsets[None, :]).flatten()


@torch.no_grad()
def masked_copy(
    model: nn.Module, layers: tuple[PrunableLayer, ...], keep: dict[str, torch.Tensor]
) -> nn.Module:
    """A same-shape copy of `model` with the removed channels zeroed (the reference output)."""
    masked = copy.deepcopy(model)
    for layer in layers:
        drop = ~keep[layer.name]
        producer = _weight_layer(masked, layer.name)
        producer.weight[drop] = 0.0
        if producer.bias is not None:
            producer.bias[drop] = 0.0
        for bn_name in layer.batchnorms:  # affine (channel_graph refuses the others)
            batchnorm = _batchnorm(masked, bn_name)
            batchnorm.weight[drop] = 0.0
            batchnorm.bias[drop] = 0.0
    return masked


def _slice_conv(conv: nn.Conv2d, out_index: torch.Tensor, in_index: torch.Tensor) -> nn.Conv2d:
    weight = conv.weight.detach()[out_index][:, in_index]
    smaller = nn.Conv2d(
        len(in_index),
        len(out_index),
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    smaller.weight.data.copy_(weight)
    if conv.bias is not None and smaller.bias is not None:
        smaller.bias.data.copy_(conv.bias.detach()[out_index])
    return smaller


def _slice_linear(linear: nn.Linear, out_index: torch.Tensor, in_index: torch.Tensor) -> nn.Linear:
    weight = linear.weight.detach()[out_index][:, in_index]
    smaller = nn.Linear(
        len(in_index),
        len(out_index),
        bias=linear.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    smaller.weight.data.copy_(weight)
    if linear.bias is not None and smaller.bias is not None:
        smaller.bias.data.copy_(linear.bias.detach()[out_index])
    return smaller


def _slice_batchnorm(
    batchnorm: nn.BatchNorm1d | nn.BatchNorm2d, index: torch.Tensor
) -> nn.BatchNorm1d | nn.BatchNorm2d:
    smaller = type(batchnorm)(
        len(index),
        eps=batchnorm.eps,
        momentum=batchnorm.momentum,
        affine=batchnorm.affine,
        track_running_stats=batchnorm.track_running_stats,
    )
    state = {
        key: value[index] if value.ndim == 1 else value
        for key, value in batchnorm.state_dict().items()
    }
    smaller.load_state_dict(state)
    return smaller.to(next(iter(state.values())).device)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = getattr(parent, child)
    for new, old in zip(module.parameters(), original.parameters(), strict=True):
        new.requires_grad_(old.requires_grad)
    module.train(original.training)
    setattr(parent, child, module)


def _rebuild(
    model: nn.Module, layers: tuple[PrunableLayer, ...], keep: dict[str, torch.Tensor]
) -> nn.Module:
    """A copy of `model` whose pruned layers (and their consumers, BatchNorms) are smaller."""
    pruned = copy.deepcopy(model)
    out_index: dict[str, torch.Tensor] = {}
    in_index: dict[str, torch.Tensor] = {}
    for layer in layers:
        out_index[layer.name] = keep[layer.name].nonzero().flatten()
        in_index[layer.consumer] = _input_index(layer, keep[layer.name])
        for bn_name in layer.batchnorms:
            _replace(
                pruned,
                bn_name,
                _slice_batchnorm(_batchnorm(model, bn_name), out_index[layer.name]),
            )
    for name in sorted(set(out_index) | set(in_index)):
        module = _weight_layer(model, name)
        if isinstance(module, nn.Conv2d):
            rows = out_index.get(name, torch.arange(module.out_channels))
            columns = in_index.get(name, torch.arange(module.in_channels))
            _replace(pruned, name, _slice_conv(module, rows, columns))
        elif isinstance(module, nn.Linear):
            rows = out_index.get(name, torch.arange(module.out_features))
            columns = in_index.get(name, torch.arange(module.in_features))
            _replace(pruned, name, _slice_linear(module, rows, columns))
    return pruned


def fit_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` whose Conv2d / Linear / BatchNorm layers have the (smaller) sizes
    of `state`, a pruned model's state_dict, so that `load_state_dict(state)` fits.

    For loading a published pruned model: build the registered architecture, fit it to
    the saved weights, then load them.
    """
    resized = copy.deepcopy(model)
    for name, module in model.named_modules():
        weight = state.get(f"{name}.weight")
        if not name or weight is None:
            continue
        rows = torch.arange(weight.shape[0])
        try:
            if isinstance(module, nn.Conv2d) and weight.shape != module.weight.shape:
                columns = torch.arange(weight.shape[1])
                _replace(resized, name, _slice_conv(module, rows, columns))
            elif isinstance(module, nn.Linear) and weight.shape != module.weight.shape:
                columns = torch.arange(weight.shape[1])
                _replace(resized, name, _slice_linear(module, rows, columns))
            elif (
                isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d)
                and weight.shape[0] != module.num_features
            ):
                _replace(resized, name, _slice_batchnorm(module, rows))
        except IndexError as exc:
            raise CompressionError(
                f"layer {name!r} of the saved weights is larger than {type(model).__name__}'s "
                f"({tuple(weight.shape)}); these weights are not a pruned copy of this model"
            ) from exc
    return resized


def prune_channels(
    model: nn.Module,
    sparsity: float,
    example_input: torch.Tensor,
    method: PruningMethod = "l1",
) -> nn.Module:
    """A physically smaller copy of `model` with `sparsity` of each prunable layer's channels gone.

    `example_input` is a batch of the model's input (normalised, e.g. shape (N, 1, 28, 28)).
    Before any fine-tuning the result gives the masked model's outputs (checked here on
    `example_input`); `model` itself is not changed. Raises ConfigError for a bad
    sparsity or method and CompressionError for an architecture it cannot prune.
    """
    _check_arguments(sparsity, method)
    graph = prunable_layers(model, example_input)
    if not graph.layers:
        reasons = "; ".join(f"{name}: {why}" for name, why in graph.kept_whole.items())
        raise CompressionError(
            f"{type(model).__name__} has no layer whose channels can be removed "
            f"({reasons or 'it has no Conv2d or Linear layers'}); channel pruning supports "
            "chains of Conv2d/Linear layers joined by activations, pooling, BatchNorm and flatten"
        )
    keep = channel_masks(model, graph.layers, sparsity, method)
    pruned = _rebuild(model, graph.layers, keep)
    reference = masked_copy(model, graph.layers, keep).eval()
    was_training = pruned.training
    pruned.eval()
    with torch.no_grad():
        expected = reference(example_input)
        try:
            actual = pruned(example_input)
        except RuntimeError as exc:  # e.g. a forward with hard-coded sizes (x.view(-1, 400))
            raise CompressionError(
                f"the pruned {type(model).__name__} does not run ({exc}); its forward probably "
                "assumes fixed layer sizes, which channel pruning changes"
            ) from exc
    pruned.train(was_training)
    scale = max(1.0, float(expected.abs().max()))
    difference = float((actual - expected).abs().max())
    if not difference <= TOLERANCE * scale:
        raise CompressionError(
            f"the pruned {type(model).__name__} differs from the masked model by {difference:.3g} "
            f"on the example input; its forward uses channels in a way pruning does not handle"
        )
    return pruned
