"""The serving half of `make demo`: start `headrace serve`, query it with Triton's client, stop it.

Run as `python -m headrace.demo --repository DIR --model NAME`. It sends a few
digits from the embedded dataset's test split (preprocessed as the model's
config.json says) through `tritonclient.grpc` and prints the predictions.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from serving.repository import ModelRepository
from training.datasets import load_splits

READY_PREFIX = "serving grpc="


def start_server(repository: Path) -> tuple[subprocess.Popen[str], str]:
    """Start `headrace serve` on free ports; returns the process and its gRPC address."""
    process = subprocess.Popen(
        [sys.executable, "-m", "headrace", "serve", "--repository", str(repository),
         "--port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(READY_PREFIX):
            return process, line.split()[1].removeprefix("grpc=")
    process.wait()
    raise RuntimeError(f"headrace serve exited with code {process.returncode} before it was ready")


def preprocess(pixels: np.ndarray, scale: float, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 model input, as the model's config.json says."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((pixels.astype(np.float32) * scale - m) / s).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="lenet5-digits")
    parser.add_argument("--count", type=int, default=8, help="digits to send")
    args = parser.parse_args(argv)

    import tritonclient.grpc as triton

    config = ModelRepository(args.repository).config(args.model)
    if config.preprocessing is None:
        raise SystemExit(f"model {args.model} has no preprocessing spec in its config.json")
    test = load_splits("digits").test
    pixels, labels = test.images[: args.count], test.labels[: args.count]
    batch = preprocess(pixels, config.preprocessing.scale, config.preprocessing.mean,
                       config.preprocessing.std)  # fmt: skip

    process, address = start_server(args.repository)
    try:
        client = triton.InferenceServerClient(url=address)
        print(f"server live={client.is_server_live()} ready={client.is_server_ready()} "
              f"model ready={client.is_model_ready(args.model)} at {address}")  # fmt: skip
        correct = 0
        for i in range(len(batch)):
            infer_input = triton.InferInput(config.inputs[0].name, [1, *batch.shape[1:]], "FP32")
            infer_input.set_data_from_numpy(batch[i : i + 1])
            result = client.infer(args.model, [infer_input])
            logits = result.as_numpy(config.outputs[0].name)
            predicted = int(np.argmax(logits[0]))
            correct += int(predicted == labels[i])
            print(f"digit {i}: label {labels[i]} predicted {config.labels[predicted]} "
                  f"(model version {result.get_response().model_version})")  # fmt: skip
        print(f"{correct}/{len(batch)} correct through tritonclient.grpc")
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
