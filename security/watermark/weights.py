"""Reading the signature layer of a published version: from the ONNX file that is served, or
from the torch weights published beside it.

The layer is named as in torch's state_dict. The TorchScript exporter keeps
those names for initializers it leaves alone (every LeNet-5 weight), but a
convolution followed by batch norm is folded into a new tensor named
`onnx::Conv_<n>` with other values (ResNet-20). So the layer is read from
`model.onnx` when an initializer of that name and shape is there, and from
`weights.pt` otherwise; the report says which.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from headrace.errors import WatermarkError
from security.watermark.key import WatermarkKey
from security.watermark.whitebox import resolve_layer
from serving.repository import MODEL_FILE, ModelVersion
from training.published import WEIGHTS_FILE, load_published_model


def onnx_initializers(version: ModelVersion) -> dict[str, np.ndarray]:
    """Every initializer of the version's ONNX graph by name."""
    model = onnx.load(str(version.model_file), load_external_data=False)
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def signature_weights(key: WatermarkKey, version: ModelVersion) -> tuple[np.ndarray, str, str]:
    """(weights, layer name, source file) of the key's signature layer in a published version."""
    version.verify()
    initializers = onnx_initializers(version)
    state: dict[str, np.ndarray] | None = None
    if WEIGHTS_FILE in version.metadata.sha256:
        model = load_published_model(version)
        state = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    names = state if state is not None else initializers
    layer = resolve_layer({n: tuple(a.shape) for n, a in names.items()}, key.whitebox_layer)
    in_onnx = initializers.get(layer)
    if in_onnx is not None and (state is None or in_onnx.shape == state[layer].shape):
        return in_onnx, layer, MODEL_FILE
    if state is not None:
        return state[layer], layer, WEIGHTS_FILE
    raise WatermarkError(
        f"model {version.name!r} version {version.version}: {layer!r} is not in {MODEL_FILE} "
        f"and the version has no {WEIGHTS_FILE} to read it from"
    )
