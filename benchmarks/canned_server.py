"""The transport ceiling: a grpc.aio server whose ModelInfer returns a canned response.

It decodes the request (grpc does that before the handler runs) and answers
with a prebuilt `ModelInferResponse` of the right size for the request's rows:
what the RPC layer alone costs, with no validation, batching or model.
ModelStreamInfer answers each request on the call the same way, in order.

    python -m benchmarks.canned_server [--port 0]

Prints `serving grpc=HOST:PORT` when ready; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

OUTPUT_CLASSES = 10


def canned_response(model: str, rows: int) -> pb.ModelInferResponse:
    """A ModelInferResponse with `rows` rows of zero FP32 logits in raw_output_contents."""
    response = pb.ModelInferResponse(model_name=model, model_version="1", id="bench")
    response.outputs.add(name="logits", datatype="FP32", shape=[rows, OUTPUT_CLASSES])
    response.raw_output_contents.append(bytes(rows * OUTPUT_CLASSES * 4))
    return response


class CannedServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Answers every ModelInfer, and every request on a ModelStreamInfer call, with a
    prebuilt response (one per row count, cached)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], pb.ModelInferResponse] = {}

    def _answer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        key = (request.model_name, request.inputs[0].shape[0] if request.inputs else 1)
        response = self._cache.get(key)
        if response is None:
            response = self._cache[key] = canned_response(*key)
        return response

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return self._answer(request)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            yield pb.ModelStreamInferResponse(infer_response=self._answer(request))


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(CannedServicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"serving grpc={host}:{bound}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
