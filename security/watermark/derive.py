"""Everything random about a watermark, derived from the key's secret with HMAC-SHA256.

Each use has its own purpose label: `HMAC-SHA256(secret, purpose)` gives a
32-byte seed for that purpose, and SHAKE-256 (the FIPS 202 extendable-output
function) stretches the seed to as many bytes as needed. Both are fixed
standards, so a key verifies the same way with any later numpy or torch (no
library generator is involved), and one derived value says nothing about
another, nor about the secret.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np


def derived_bytes(secret: bytes, purpose: str, length: int) -> bytes:
    """`length` pseudo-random bytes for `purpose`: SHAKE-256 of HMAC-SHA256(secret, purpose)."""
    seed = hmac.new(secret, purpose.encode("utf-8"), hashlib.sha256).digest()
    return hashlib.shake_256(seed).digest(length)


def derived_uint8(secret: bytes, purpose: str, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform uint8 values of the given shape."""
    size = int(np.prod(shape))
    return np.frombuffer(derived_bytes(secret, purpose, size), dtype=np.uint8).reshape(shape).copy()


def derived_integers(secret: bytes, purpose: str, count: int, high: int) -> np.ndarray:
    """`count` integers uniform in [0, high) (rejection sampling on 32-bit words, no bias)."""
    if not 1 <= high <= 2**32:
        raise ValueError(f"high must lie in 1..2**32, not {high}")
    limit = (2**32 // high) * high  # accept words below the largest multiple of `high`
    values: list[int] = []
    round_ = 0
    while len(values) < count:
        need = count - len(values)
        raw = derived_bytes(secret, f"{purpose}/round{round_}", 4 * (need + need // 4 + 8))
        words = np.frombuffer(raw, dtype=">u4").astype(np.int64)
        values.extend(int(w % high) for w in words if w < limit)
        round_ += 1
    return np.asarray(values[:count], dtype=np.int64)


def derived_uniform(secret: bytes, purpose: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values uniform in [-1, 1) of the given shape (from 32-bit words)."""
    size = int(np.prod(shape))
    words = np.frombuffer(derived_bytes(secret, purpose, 4 * size), dtype=">u4")
    return (words.astype(np.float64) / 2**31 - 1.0).astype(np.float32).reshape(shape)


def derived_bits(secret: bytes, purpose: str, count: int) -> np.ndarray:
    """`count` uniform bits (0/1, int64)."""
    raw = np.frombuffer(derived_bytes(secret, purpose, -(-count // 8)), dtype=np.uint8)
    return np.unpackbits(raw)[:count].astype(np.int64)
