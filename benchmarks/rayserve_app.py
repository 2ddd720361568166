"""The Ray Serve baseline: ONNX Runtime behind `@serve.batch`, over Serve's own gRPC ingress.

One application per model, each a deployment wrapping an ONNX Runtime session
with the server's thread settings. Serve's gRPC proxy registers our
`GRPCInferenceService`, so the load generator speaks the identical protocol
(the application is chosen with the `application` call metadata); the
deployment's `ModelInfer` gets the decoded request and `@serve.batch` merges
concurrent ones into one session run, with `max_batch_size` and
`batch_wait_timeout_s` set to headrace's batching settings.
`max_ongoing_requests` is raised above the batch size (Serve's default of 5
would cap every batch at 5).

    python -m benchmarks.rayserve_app --model lenet5=/tmp/r/lenet5/1/model.onnx \
        --grpc-port 9000 --http-port 8000

Prints `serving grpc=HOST:PORT apps=...` when ready; on SIGTERM/SIGINT it runs
`serve.shutdown()` and `ray.shutdown()`, which stop every Ray process it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from protos import grpc_service_pb2 as pb

SERVICER = "protos.grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"


class OrtBatchedModel:
    """The replica: decode requests, run one batch, split the logits back per request."""

    def __init__(self, model_file: str) -> None:
        import onnxruntime as ort

        from serving.runner import default_threads

        options = ort.SessionOptions()
        options.intra_op_num_threads = default_threads(1)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])

    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        # `@serve.batch` turns the list-in, list-out method into a one-request call.
        one = cast(
            Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]], self._batched
        )
        return await one(request)

    async def _batched(self, requests: list[pb.ModelInferRequest]) -> list[pb.ModelInferResponse]:
        """Undecorated here; `build_app` wraps it in `@serve.batch` with the run's settings."""
        arrays = [
            np.frombuffer(r.raw_input_contents[0], dtype="<f4").reshape(tuple(r.inputs[0].shape))
            for r in requests
        ]
        merged = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        (logits,) = self.session.run(None, {"input": merged})
        responses, start = [], 0
        for request, array in zip(requests, arrays, strict=True):
            rows = array.shape[0]
            part = np.ascontiguousarray(logits[start : start + rows], dtype="<f4")
            start += rows
            response = pb.ModelInferResponse(
                model_name=request.model_name, model_version="1", id=request.id
            )
            response.outputs.add(name="logits", datatype="FP32", shape=list(part.shape))
            response.raw_output_contents.append(part.tobytes())
            responses.append(response)
        return responses


def build_app(
    model_file: Path, max_batch_size: int, batch_wait_timeout_s: float, max_ongoing: int
) -> Any:
    """A bound Serve application for one model file."""
    from ray import serve

    cls = type(
        "OrtBatchedModel",
        (OrtBatchedModel,),
        {
            "_batched": serve.batch(
                max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s
            )(OrtBatchedModel._batched)
        },
    )
    deployment = serve.deployment(
        name="ort", max_ongoing_requests=max_ongoing, ray_actor_options={"num_cpus": 1}
    )(cls)
    return deployment.bind(str(model_file))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="name=path/model.onnx")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.002)
    parser.add_argument("--max-ongoing-requests", type=int, default=256)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args(argv)

    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": args.http_port},
            grpc_options=gRPCOptions(port=args.grpc_port, grpc_servicer_functions=[SERVICER]),
        )
        names = []
        for item in args.model:
            name, _, path = item.partition("=")
            app = build_app(
                Path(path), args.max_batch_size, args.batch_wait_timeout_s,
                args.max_ongoing_requests,
            )  # fmt: skip
            serve.run(app, name=name, route_prefix=f"/{name}")
            names.append(name)
        print(f"serving grpc=127.0.0.1:{args.grpc_port} apps={','.join(names)}", flush=True)
        stopping.wait()
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    os._exit(0)  # Ray's leftover threads must not keep the process alive


if __name__ == "__main__":
    main()
