"""The Open Inference Protocol gRPC servicer: converts messages and calls the dataplane.

No model logic and no error handling live here: conversions are in
`serving.grpc_convert`, errors are mapped by `serving.grpc_errors`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from headrace.errors import HeadraceError
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from serving.dataplane import DataPlane, VersionStats
from serving.grpc_convert import (
    model_config_to_proto,
    model_metadata_to_proto,
    request_from_proto,
    response_to_proto,
)
from serving.grpc_errors import INTERNAL_MESSAGE, client_message
from serving.types import InferRequest

log = logging.getLogger(__name__)
Context: TypeAlias = grpc.aio.ServicerContext

# Triton's stream conventions. Each response on a stream is its request's last one (models here
# are not decoupled), and says so in this response parameter, which streaming clients wait for.
FINAL_RESPONSE = "triton_final_response"
# A stream opened with this header set to "true" ends at its first error, with that error's
# gRPC status, instead of carrying the error as a message and going on.
GRPC_ERROR_HEADER = "triton_grpc_error"
# Requests of one ModelStreamInfer call read but not yet answered on the wire. At the bound the
# server reads no more of the stream until the client takes responses, so a client that sends
# and never reads is held back by gRPC's flow control instead of piling responses up here.
STREAM_OUTSTANDING = 1024


def _with_deadline(request: InferRequest, context: Context) -> InferRequest:
    remaining = context.time_remaining()
    if remaining is not None:
        request.deadline = time.monotonic() + remaining
    return request


def _wants_grpc_errors(context: Context) -> bool:
    metadata = context.invocation_metadata() or ()
    return any(key == GRPC_ERROR_HEADER and value == "true" for key, value in metadata)


def _duration(count: int, ns: int) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=count, ns=ns)


def _statistics(name: str, version: str, stats: VersionStats) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success_count, stats.success_ns),
            fail=_duration(stats.fail_count, stats.fail_ns),
            queue=_duration(stats.success_count, stats.queue_ns),
            compute_input=_duration(stats.success_count, stats.input_ns),
            compute_infer=_duration(stats.success_count, stats.compute_ns),
            compute_output=_duration(stats.success_count, stats.output_ns),
        ),
        batch_stats=[  # one entry per batch size executed, as Triton reports them
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(batch.count, batch.input_ns),
                compute_infer=_duration(batch.count, batch.infer_ns),
                compute_output=_duration(batch.count, batch.output_ns),
            )
            for size, batch in sorted(stats.batches.items())
        ],
    )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over a `DataPlane`."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version)
        )

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        name, version, extensions = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        meta = self.dataplane.model_metadata(request.name, request.version)
        return model_metadata_to_proto(
            meta.name, meta.versions, meta.platform, meta.inputs, meta.outputs
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        config = self.dataplane.model_config(request.name, request.version)
        parameters = self.dataplane.version_parameters(request.name, request.version)
        policy = self.dataplane.version_policy()
        return pb.ModelConfigResponse(config=model_config_to_proto(config, policy, parameters))

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        stats = self.dataplane.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(
            model_stats=[_statistics(name, version, s) for (name, version), s in stats.items()]
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        entries = await self.dataplane.repository_index(request.ready, request.repository_name)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in entries
            ]
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        parameters = {
            key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in request.parameters.items()
        }
        await self.dataplane.load(request.model_name, parameters, request.repository_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dataplane.unload(request.model_name, request.repository_name)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        decoded = request_from_proto(request, check_inputs=self.dataplane.check_inputs)
        return response_to_proto(await self.dataplane.infer(_with_deadline(decoded, context)))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on a stream run concurrently (so they can share batches); each gets a
        response or an error message, in completion order, and the stream goes on (or, with
        the `triton_grpc_error: true` header, ends with the first error's status). At most
        STREAM_OUTSTANDING requests are read ahead of the responses sent."""
        done: asyncio.Queue[pb.ModelStreamInferResponse | Exception | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()
        outstanding = asyncio.Semaphore(STREAM_OUTSTANDING)  # see STREAM_OUTSTANDING
        grpc_errors = _wants_grpc_errors(context)

        async def answer(message: pb.ModelInferRequest) -> None:
            try:
                decoded = request_from_proto(message, check_inputs=self.dataplane.check_inputs)
                infer_request = _with_deadline(decoded, context)
                response = response_to_proto(await self.dataplane.infer(infer_request))
                item = pb.ModelStreamInferResponse(infer_response=response)
            except Exception as exc:  # a HeadraceError says what was wrong; others are bugs
                if grpc_errors:
                    await done.put(exc)  # ends the stream with its status (serving.grpc_errors)
                    return
                if isinstance(exc, HeadraceError):
                    text = client_message(exc.message)
                else:  # answered all the same: a client waits for one response per request
                    log.exception("internal error in ModelStreamInfer (request id %r)", message.id)
                    text = INTERNAL_MESSAGE
                response = pb.ModelInferResponse(model_name=message.model_name, id=message.id)
                item = pb.ModelStreamInferResponse(error_message=text, infer_response=response)
            item.infer_response.parameters[FINAL_RESPONSE].bool_param = True
            await done.put(item)

        async def read_all() -> None:
            async for message in request_iterator:
                await outstanding.acquire()  # released once its response is sent
                task = asyncio.create_task(answer(message))
                pending.add(task)
                task.add_done_callback(pending.discard)
            while pending:
                await asyncio.gather(*list(pending), return_exceptions=True)
            await done.put(None)

        reader = asyncio.create_task(read_all())
        try:
            while (item := await done.get()) is not None:
                if isinstance(item, Exception):
                    raise item  # the stream's status (see serving.grpc_errors)
                yield item
                outstanding.release()
            await reader
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()
