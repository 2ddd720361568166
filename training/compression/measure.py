"""What a compressed model is judged by, measured on ONNX Runtime: accuracy, size, latency.

- accuracy: test-split images through the served preprocessing (`PreprocessingSpec.apply`,
  exactly what clients do) into an ONNX Runtime session;
- size: bytes of the `.onnx` file on disk;
- latency: seconds per `session.run` at a batch size, on one intra-op thread.
  Several models are timed in interleaved rounds (model A, B, C, A, B, C, ...)
  after a warm-up; each model's figure is the mean call time of its fastest
  round. Other work on a shared machine only ever adds time, so the fastest
  round is the steadiest estimate, and interleaving exposes every model to the
  same quiet and busy spells.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel

from serving.model_config import PreprocessingSpec
from training.compression.onnx_export import session
from training.datasets.base import ImageArrays
from training.export import INPUT_NAME, OUTPUT_NAME

LATENCY_BATCHES = (1, 64)
_MIN_ROUNDS = 5


class OnnxAccuracy(BaseModel):
    """Test accuracy of an ONNX file."""

    accuracy: float
    samples: int


class Latency(BaseModel):
    """Seconds per call at each batch size (mean of the fastest round)."""

    seconds: dict[int, float]
    rounds: int


def onnx_accuracy(
    path: Path, arrays: ImageArrays, preprocessing: PreprocessingSpec | None, batch: int = 256
) -> OnnxAccuracy:
    """Top-1 accuracy of the ONNX model at `path` on `arrays` (raw uint8 pixels)."""
    sess = session(path)
    correct = 0
    for start in range(0, len(arrays), batch):
        pixels = arrays.images[start : start + batch]
        x = preprocessing.apply(pixels) if preprocessing is not None else pixels.astype(np.float32)
        (logits,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        correct += int((np.asarray(logits).argmax(1) == arrays.labels[start : start + batch]).sum())
    return OnnxAccuracy(accuracy=correct / max(len(arrays), 1), samples=len(arrays))


def file_bytes(path: Path) -> int:
    """Size of a file on disk, in bytes."""
    return Path(path).stat().st_size


def compare_latency(
    paths: Mapping[str, Path],
    input_shape: Sequence[int],
    batches: Sequence[int] = LATENCY_BATCHES,
    seconds: float = 0.5,
    seed: int = 0,
) -> dict[str, Latency]:
    """Latency of several ONNX files, timed in interleaved rounds on one thread each.

    `seconds` is roughly the timing budget per model and batch size (after a
    warm-up of the same number of calls as one round).
    """
    sessions = {key: session(path) for key, path in paths.items()}
    rng = np.random.default_rng(seed)
    results: dict[str, dict[int, float]] = {key: {} for key in sessions}
    rounds_run = _MIN_ROUNDS
    for batch in batches:
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        feeds = {INPUT_NAME: x}
        # calls per round: enough that one round of the slowest model takes ~seconds/rounds
        slowest = max(_time_calls(sess, feeds, 3) for sess in sessions.values())
        rounds = max(_MIN_ROUNDS, min(100, int(seconds / 0.02)))
        calls = max(1, int(seconds / rounds / max(slowest, 1e-7)))
        for sess in sessions.values():
            _time_calls(sess, feeds, calls)  # warm-up
        samples: dict[str, list[float]] = {key: [] for key in sessions}
        for _ in range(rounds):
            for key, sess in sessions.items():
                samples[key].append(_time_calls(sess, feeds, calls))
        for key, values in samples.items():
            results[key][batch] = min(values)
        rounds_run = rounds
    return {key: Latency(seconds=values, rounds=rounds_run) for key, values in results.items()}


def _time_calls(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], calls: int) -> float:
    """Mean seconds per `run` over `calls` back-to-back calls."""
    run = sess.run
    started = time.perf_counter()
    for _ in range(calls):
        run([OUTPUT_NAME], feeds)
    return (time.perf_counter() - started) / calls
