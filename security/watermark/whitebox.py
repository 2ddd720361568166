"""The white-box signature (Uchida et al. style): key-derived bits held by one weight tensor.

With w the flattened weights of the chosen layer, X a key-derived matrix of
shape (bits, w.size) with entries uniform in [-1, 1) and b the key's bits, the
signature reads `bits = (X @ w > 0)`. Training adds
`strength * BCE(sigmoid(X @ w), b)` to the loss, which pushes each projection
to the side of zero its bit asks for, with a margin that grows as training
goes on. An unmarked model's projections fall on either side by chance:
its bit error rate is about 1/2.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from headrace.errors import WatermarkError
from security.watermark.derive import derived_bits, derived_uniform
from security.watermark.key import WatermarkKey

AUTO_LAYER = "auto"


def resolve_layer(shapes: Mapping[str, tuple[int, ...]], layer: str) -> str:
    """The state_dict name the signature lives in.

    `layer` is a state_dict name (a wrapper's prefix such as Opacus' `_module.`
    is tolerated), or 'auto': the convolution weight (4-D) with the most
    elements, the first such in state_dict order on ties; with no convolution,
    the largest 2-D weight.
    """
    if layer != AUTO_LAYER:
        if layer in shapes:
            return layer
        suffixed = [name for name in shapes if name.endswith("." + layer)]
        if len(suffixed) == 1:
            return suffixed[0]
        weights = ", ".join(n for n, s in shapes.items() if len(s) >= 2)
        raise WatermarkError(
            f"the model has no weight {layer!r} for the white-box signature; weights: {weights}"
        )
    for rank in (4, 2):
        candidates = [(n, s) for n, s in shapes.items() if len(s) == rank and n.endswith("weight")]
        if candidates:
            best = max(int(np.prod(s)) for _, s in candidates)
            return next(n for n, s in candidates if int(np.prod(s)) == best)
    raise WatermarkError("the model has no convolution or linear weight to hold a signature")


def signature_bits(key: WatermarkKey) -> np.ndarray:
    """The key's signature bits (0/1, int64)."""
    return derived_bits(key.secret_bytes, "whitebox/bits", key.whitebox_bits)


def projection(key: WatermarkKey, size: int) -> np.ndarray:
    """The key's (bits, size) projection matrix for a weight tensor of `size` elements."""
    if size < key.whitebox_bits:
        raise WatermarkError(
            f"the signature layer has {size} weights, fewer than the key's "
            f"{key.whitebox_bits} bits; make a key for a larger layer or with fewer bits "
            "(`headrace watermark keygen --layer NAME` or `--bits N`)"
        )
    return derived_uniform(
        key.secret_bytes, f"whitebox/projection/{size}", (key.whitebox_bits, size)
    )


def read_bits(weights: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The bits a weight tensor holds under `matrix`."""
    flat = np.asarray(weights, dtype=np.float64).reshape(-1)
    return (matrix.astype(np.float64) @ flat > 0).astype(np.int64)


def bit_errors(key: WatermarkKey, weights: np.ndarray) -> int:
    """How many of the key's bits the weights get wrong."""
    found = read_bits(weights, projection(key, int(np.asarray(weights).size)))
    return int((found != signature_bits(key)).sum())


class SignatureLoss:
    """The regulariser `strength * BCE(sigmoid(X @ w), b)` for one layer's weights."""

    def __init__(self, key: WatermarkKey, size: int, strength: float) -> None:
        self.matrix = torch.from_numpy(projection(key, size))
        self.bits = torch.from_numpy(signature_bits(key)).to(torch.float32)
        self.strength = strength

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        logits = self.matrix.to(weight.device) @ weight.reshape(-1)
        bce = F.binary_cross_entropy_with_logits(logits, self.bits.to(weight.device))
        return self.strength * bce
