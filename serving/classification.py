"""Triton's classification extension: an output answered as its top k classes.

A client asks for it with the requested output's `classification` parameter
(tritonclient's `InferRequestedOutput(name, class_count=k)`). The output then
comes back as BYTES of shape [batch, k] (or [k] for a model without a batch
axis), best class first, each element "value:index" or, when the model's
config lists labels, "value:index:label".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from headrace.errors import InvalidInput
from serving.model_config import ModelConfig

PARAMETER = "classification"


def class_counts(outputs: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, int]:
    """The requested top-k count of each output that asks for one, from each requested
    output's name and parameters; 0 (the protocol's default) asks for the plain tensor."""
    counts: dict[str, int] = {}
    for name, parameters in outputs:
        value = parameters.get(PARAMETER)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(
                f"output {name!r}: parameter {PARAMETER!r} must be a class count >= 0, "
                f"got {value!r}"
            )
        if value:
            counts[name] = value
    return counts


def check_classifiable(config: ModelConfig, counts: Mapping[str, int]) -> None:
    """Raise `InvalidInput` for a classification asked of an output that holds no scores."""
    specs = {spec.name: spec for spec in config.outputs}
    for name in counts:
        spec = specs.get(name)
        if spec is not None and spec.datatype in ("BYTES", "BOOL"):
            raise InvalidInput(
                f"output {name!r} is {spec.datatype}; classification needs numeric scores"
            )


def top_classes(scores: np.ndarray, k: int, labels: list[str], batched: bool) -> np.ndarray:
    """The top `k` classes of each sample's scores (all of a sample's elements, flattened),
    as BYTES elements "value:index[:label]", best first; ties go to the lower index."""
    rows = scores.reshape(scores.shape[0], -1) if batched else scores.reshape(1, -1)
    k = min(k, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    out = np.empty(order.shape, dtype=np.object_)
    for r, indices in enumerate(order):
        for c, index in enumerate(indices.tolist()):
            text = f"{float(rows[r, index]):f}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            out[r, c] = text.encode()
    return out if batched else out[0]
