"""The gRPC half of `make demo`: start `headrace serve`, query it with Triton's client, stop it.

Run as `python -m headrace.demo_grpc --repository DIR --model NAME`. It imports
`tritonclient.grpc`, whose generated `inference` protos cannot share a process
with headrace's own, so it touches nothing that imports `protos`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from headrace.processes import stop_process
from serving.repository import ModelRepository
from training.datasets import load_splits

READY_PREFIX = "serving grpc="


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
    batch = config.preprocessing.apply(test.images[: args.count])
    server = subprocess.Popen(
        [sys.executable, "-m", "headrace", "serve", "--repository", str(args.repository),
         "--port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        address = next(
            (line.split()[1].removeprefix("grpc=") for line in server.stdout
             if line.startswith(READY_PREFIX)),
            None,
        )  # fmt: skip
        if address is None:
            raise SystemExit(f"headrace serve exited with code {server.wait()} before it was ready")
        client = triton.InferenceServerClient(url=address)
        print(
            f"gRPC server live={client.is_server_live()} ready={client.is_server_ready()} "
            f"model ready={client.is_model_ready(args.model)} at {address}"
        )
        correct = 0
        for i in range(len(batch)):
            infer_input = triton.InferInput(config.inputs[0].name, [1, *batch.shape[1:]], "FP32")
            infer_input.set_data_from_numpy(batch[i : i + 1])
            result = client.infer(args.model, [infer_input])
            predicted = int(np.argmax(result.as_numpy(config.outputs[0].name)[0]))
            correct += int(predicted == test.labels[i])
            print(
                f"digit {i}: label {test.labels[i]} predicted {config.labels[predicted]} "
                f"(model version {result.get_response().model_version})"
            )
        print(f"{correct}/{len(batch)} correct through tritonclient.grpc")
        client.close()
    finally:
        stop_process(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
