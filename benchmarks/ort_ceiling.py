"""The compute ceiling: ONNX Runtime alone, with the server's session settings, by batch size.

Builds the model exactly as the server does for one instance
(`serving.runner.OnnxModel`: sequential execution, one inter-op thread,
`default_threads(1)` intra-op threads for the cores this process may use) and
times `run` at each batch size. Run it pinned to the server's core:

    python -m benchmarks.ort_ceiling --model-file m.onnx --shape 1 28 28 --cpu 0

Prints one JSON object: samples/s per batch size, the best and its batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from serving.runner import OnnxModel, default_threads

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)


def samples_per_s(model: OnnxModel, shape: tuple[int, ...], batch: int, seconds: float) -> float:
    """Samples per second of back-to-back `run` calls at one batch size."""
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    model.run({"input": x})  # warm-up
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        model.run({"input": x})
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls * batch / (now - started)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--shape", type=int, nargs="+", required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per batch size")
    parser.add_argument("--cpu", type=int, default=None, help="pin to one core (the server's)")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    model = OnnxModel(args.model_file, instances=1)
    try:
        rates = {b: samples_per_s(model, tuple(args.shape), b, args.seconds) for b in args.batches}
    finally:
        model.close()
    best = max(rates, key=rates.__getitem__)
    result: dict[str, object] = {
        "intra_op_threads": default_threads(1),
        "samples_per_s": {str(b): round(r, 1) for b, r in rates.items()},
        "best_batch": best,
        "best_samples_per_s": round(rates[best], 1),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
