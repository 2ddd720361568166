"""Which layers of a model can lose output channels, found on its torch.fx graph.

A Conv2d or Linear layer ("producer") can lose output channels when its output
flows, through nothing but channel-wise ops that keep a zero channel at zero
(ReLU, tanh, pooling, dropout, flatten) and BatchNorm, into exactly one other
Conv2d or Linear layer ("consumer") whose matching input channels can be cut
too. Layers whose output also feeds a residual addition, a concatenation or the
model's output (the classifier) are left whole: cutting them would change what
another branch adds to, or the number of classes.

For ResNet-20 this keeps the channels that the residual connections add
together and prunes the inner channels of every block (conv1 -> bn1 -> relu ->
conv2), the usual way to prune residual networks without re-aligning branches.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from headrace.errors import CompressionError

# Modules that act on each channel alone and map an all-zero channel to an all-zero channel
# (sigmoid is not here: sigmoid(0) = 0.5, so a removed channel would still contribute).
_ZERO_KEEPING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_ZERO_KEEPING_FUNCTIONS = {
    torch.relu,
    torch.tanh,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.hardtanh,
    F.tanh,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}
_ZERO_KEEPING_METHODS = {"relu", "tanh", "contiguous"}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class PrunableLayer:
    """A layer whose output channels can be removed, and where those channels go."""

    name: str  # qualified name of the Conv2d / Linear whose output channels are cut
    consumer: str  # qualified name of the Conv2d / Linear that reads them (input cut to match)
    batchnorms: tuple[str, ...]  # BatchNorm layers in between, cut the same way
    positions: int  # inputs of `consumer` per channel: H*W when it reads a flattened map, else 1


@dataclass(frozen=True)
class ChannelGraph:
    """The prunable layers of a model and why the other Conv2d / Linear layers are not."""

    layers: tuple[PrunableLayer, ...]
    kept_whole: dict[str, str]  # layer name -> reason it keeps all its channels


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A flatten of (N, C, ...) into (N, C * ...): channel c becomes a contiguous block."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        return bool(
            isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
        )
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):  # torch.flatten(x, start, end) and x.flatten(start, end) take the same arguments
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return bool(start == 1 and end == -1)
    return False


def _keeps_zero(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _ZERO_KEEPING_MODULES)
    if node.op == "call_function":
        return node.target in _ZERO_KEEPING_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ZERO_KEEPING_METHODS
    return False


def _is_weight_layer(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1
    return isinstance(module, nn.Linear)


def _follow(
    start: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]
) -> PrunableLayer | str:
    """Walk from a Conv2d / Linear node to its consumer; a reason string when there is none."""
    name = str(start.target)
    out_shape = _shape(start)
    if out_shape is None or len(out_shape) != (4 if isinstance(modules[name], nn.Conv2d) else 2):
        return "its output is not (batch, channels[, H, W])"
    channels = out_shape[1]
    batchnorms: list[str] = []
    flattened = False
    node = start
    while True:
        users = list(node.users)
        if len(users) != 1:
            return "its output feeds several ops (a residual or skip connection)"
        node = users[0]
        if node.op == "output":
            return "it produces the model's output"
        if node.op == "call_module" and _is_weight_layer(modules[str(node.target)]):
            consumer = str(node.target)
            if calls[consumer] != 1:
                return f"its consumer {consumer!r} is called more than once"
            in_shape = _shape(node.all_input_nodes[0])
            if isinstance(modules[consumer], nn.Conv2d):
                if flattened or in_shape is None or in_shape[1] != channels:
                    return f"its channels do not map onto {consumer!r}'s input channels"
                return PrunableLayer(name, consumer, tuple(batchnorms), 1)
            if in_shape is None or len(in_shape) != 2 or in_shape[1] % channels:
                return f"its channels do not map onto {consumer!r}'s inputs"
            if not flattened and in_shape[1] != channels:
                return f"its channels do not map onto {consumer!r}'s inputs"
            return PrunableLayer(name, consumer, tuple(batchnorms), in_shape[1] // channels)
        if node.op == "call_module" and isinstance(modules[str(node.target)], _BATCHNORMS):
            batchnorm = modules[str(node.target)]
            if flattened or calls[str(node.target)] != 1 or not batchnorm.affine:
                return f"batch norm {node.target!r} cannot be cut with it (needs affine=True)"
            batchnorms.append(str(node.target))
            continue
        if not flattened and _is_flatten(node, modules):
            flattened = True
            continue
        if _keeps_zero(node, modules):
            continue
        what = node.target if node.op != "call_function" else getattr(node.target, "__name__", "")
        if node.target in (operator.add, torch.add, operator.iadd, torch.cat):
            return f"its output reaches {what!r} (a residual or concatenation)"
        return f"its output goes through {what!r}, which channel pruning does not handle"


def analyse(model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """The prunable layers of `model` (traced with torch.fx; run once on `example_input`).

    `model` should be a copy in eval mode: the shape pass runs a forward.
    """
    try:  # run it plainly first: torch's own message, not ShapeProp's wrapped one
        with torch.no_grad():
            model(example_input)
    except RuntimeError as exc:
        raise CompressionError(
            f"{type(model).__name__} does not run on an example input of shape "
            f"{tuple(example_input.shape)} ({exc}); pass an input of the shape the model takes"
        ) from exc
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...)
        raise CompressionError(
            f"cannot trace {type(model).__name__} with torch.fx ({exc}); channel pruning needs "
            "a model whose forward has no data-dependent control flow"
        ) from exc
    with torch.no_grad():
        ShapeProp(graph_module).propagate(example_input)
    modules = dict(graph_module.named_modules())
    calls: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    layers: list[PrunableLayer] = []
    kept_whole: dict[str, str] = {}
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or not _is_weight_layer(modules[str(node.target)]):
            continue
        if calls[str(node.target)] != 1:
            kept_whole[str(node.target)] = "it is called more than once"
            continue
        found = _follow(node, modules, calls)
        if isinstance(found, str):
            kept_whole[str(node.target)] = found
        else:
            layers.append(found)
    return ChannelGraph(tuple(layers), kept_whole)
