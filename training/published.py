"""Torch weights published beside the ONNX file, and loading them back safely.

Each published version carries `weights.pt` (the model's `state_dict`, tensors
only) so later jobs (fine-tuning, watermark checks, robustness reports,
compression) can start from the exact published model. Loading checks every
file's sha256 first and reads the weights with `weights_only=True`: no pickle
from the repository is ever executed. Compressed versions (`headrace compress`:
pruned or quantized layers) are published as ONNX only and are refused here
with the name of the version they came from.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from headrace.errors import RepositoryError
from serving.repository import ModelVersion
from training.models import build_model

WEIGHTS_FILE = "weights.pt"


def save_weights(model: nn.Module, path: Path) -> Path:
    """Write `model`'s state_dict (plain tensors) to `path`; returns `path`."""
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    torch.save(state, path)
    return path


def published_architecture(version: ModelVersion) -> nn.Module:
    """A freshly initialised model of the version's architecture, options and tensor shapes."""
    config = version.config
    channels, size = config.inputs[0].dims[0], config.inputs[0].dims[-1]
    options = version.metadata.architecture_options  # empty for versions published before it
    return build_model(
        version.metadata.architecture,
        num_classes=config.outputs[0].dims[-1],
        in_channels=channels,
        image_size=size,
        width=options.get("width", 1.0),
        dropout=options.get("dropout", 0.0),
    )


def load_published_model(version: ModelVersion) -> nn.Module:
    """The torch model of a published version, in eval mode; refuses tampered or unsafe files."""
    version.verify()
    path = version.path / WEIGHTS_FILE
    if WEIGHTS_FILE not in version.metadata.sha256 or not path.is_file():
        origin = version.metadata.lineage.get("compressed_from")
        if origin is not None:  # pruned/quantized layers no longer fit the registered architecture
            raise RepositoryError(
                f"model {version.name!r} version {version.version} is a compressed model "
                f"({version.metadata.lineage.get('compression')}, from {origin}) published as "
                f"ONNX only, without torch weights; use its source {origin} instead"
            )
        raise RepositoryError(
            f"model {version.name!r} version {version.version} has no {WEIGHTS_FILE}; "
            "it was published without torch weights (train it again with `headrace train`)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for refused or broken files
        raise RepositoryError(
            f"model {version.name!r} version {version.version}: {WEIGHTS_FILE} is not a plain "
            f"tensor file and was not loaded ({type(exc).__name__})"
        ) from exc
    if not isinstance(state, dict):
        raise RepositoryError(f"model {version.name!r}: {WEIGHTS_FILE} is not a state_dict")
    model = published_architecture(version)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RepositoryError(
            f"model {version.name!r} version {version.version}: {WEIGHTS_FILE} does not fit "
            f"architecture {version.metadata.architecture!r}: {exc}"
        ) from exc
    return model.eval()
