"""`serving.grpc_errors.error_mapped`: what a servicer raises becomes the right gRPC status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest

from headrace.errors import HeadraceError, InvalidInput, ModelNotFound
from protos import grpc_service_pb2 as pb
from serving.grpc_errors import INTERNAL_MESSAGE, error_mapped
from serving.grpc_servicer import InferenceServicer
from serving.types import InferRequest, InferResponse, InferTensor

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code, self.details = code, details


class FakeContext:
    """The one part of grpc.aio's servicer context the wrapper uses: `abort` never returns."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Servicer:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:  # every RPC of the service: answers or raises
        async def unary(request: Any, context: Any) -> str:
            if self.error is not None:
                raise self.error
            return f"{name} answered"

        return unary

    async def ModelStreamInfer(self, requests: Any, context: Any) -> AsyncIterator[str]:
        yield "first"
        if self.error is not None:
            raise self.error
        yield "second"


def call(servicer: Servicer, method: str) -> Any:
    return asyncio.run(getattr(error_mapped(servicer, SERVICE), method)(None, FakeContext()))


def test_every_rpc_of_the_service_is_wrapped() -> None:
    mapped = error_mapped(Servicer(None), SERVICE)
    assert sorted(vars(mapped)) == sorted(m.name for m in SERVICE.methods)
    assert call(Servicer(None), "ModelInfer") == "ModelInfer answered"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ModelNotFound("model 'x' is not in the repository"), grpc.StatusCode.NOT_FOUND),
        (InvalidInput("input 'x': wrong shape"), grpc.StatusCode.INVALID_ARGUMENT),
        (HeadraceError("plain"), grpc.StatusCode.INTERNAL),
    ],
)
def test_a_headrace_error_keeps_its_status_and_message(error: HeadraceError, code: Any) -> None:
    with pytest.raises(Aborted) as aborted:
        call(Servicer(error), "ModelInfer")
    assert (aborted.value.code, aborted.value.details) == (code, error.message)


def test_any_other_error_is_internal_without_its_details(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(Aborted) as aborted:
        call(Servicer(KeyError("/secret/path")), "ModelMetadata")
    assert aborted.value.code == grpc.StatusCode.INTERNAL
    assert "secret" not in aborted.value.details
    assert "internal error in /inference.GRPCInferenceService/ModelMetadata" in caplog.text


def test_a_streaming_rpc_yields_until_its_error_then_aborts() -> None:
    async def consume() -> list[str]:
        mapped = error_mapped(Servicer(InvalidInput("bad")), SERVICE)
        seen = []
        with pytest.raises(Aborted) as aborted:
            async for item in mapped.ModelStreamInfer(None, FakeContext()):
                seen.append(item)
        assert aborted.value.code == grpc.StatusCode.INVALID_ARGUMENT
        return seen

    assert asyncio.run(consume()) == ["first"]


class BuggyDataPlane:
    """Answers every request but the one with id "boom", which meets a bug (not a
    HeadraceError) and "bad", which is refused."""

    def check_inputs(self, model_name: str, model_version: str, inputs: object) -> None:
        """Any inputs pass (`infer` decides)."""

    async def infer(self, request: InferRequest) -> InferResponse:
        if request.id == "boom":
            raise KeyError("/secret/path")
        if request.id == "bad":
            raise InvalidInput("input 'x': wrong shape")
        y = InferTensor.from_array("y", np.zeros(1, np.float32))
        return InferResponse(request.model_name, "1", [y], id=request.id)


class StreamContext(FakeContext):
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def stream_of(ids: list[str], metadata: tuple[tuple[str, str], ...] = ()) -> list[Any]:
    """What ModelStreamInfer sends back for requests with these ids (then Aborted, if raised)."""

    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        for request_id in ids:
            message = pb.ModelInferRequest(model_name="m", id=request_id)
            tensor = message.inputs.add(name="x", datatype="FP32", shape=[1])
            tensor.contents.fp32_contents.append(1.0)
            yield message

    async def consume() -> list[Any]:
        mapped = error_mapped(InferenceServicer(BuggyDataPlane()), SERVICE)  # type: ignore[arg-type]
        seen: list[Any] = []
        try:
            async for item in mapped.ModelStreamInfer(requests(), StreamContext(metadata)):
                seen.append((item.infer_response.id, item.error_message))
        except Aborted as exc:
            seen.append(exc)
        return seen

    return asyncio.run(consume())


def test_a_stream_answers_a_request_that_meets_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    """A request on ModelStreamInfer that met an error other than a HeadraceError got no
    response at all, and nothing was logged: a client waiting for one response per request
    waited forever. It is answered INTERNAL (logged with its traceback, no detail sent), as
    ModelInfer answers it, and with the triton_grpc_error header it ends the stream so."""
    got = stream_of(["a", "boom", "bad", "c"])
    assert sorted(got) == [
        ("a", ""),
        ("bad", "input 'x': wrong shape"),
        ("boom", INTERNAL_MESSAGE),
        ("c", ""),
    ]
    assert "internal error in ModelStreamInfer (request id 'boom')" in caplog.text
    assert "secret" not in INTERNAL_MESSAGE
    [*_, ended] = stream_of(["boom"], (("triton_grpc_error", "true"),))
    assert isinstance(ended, Aborted)
    assert (ended.code, ended.details) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def test_a_stream_reads_no_further_ahead_of_its_client_than_the_bound() -> None:
    """A client that sent on ModelStreamInfer and did not read had every request read and
    answered, its responses piling up in the server without limit; now the server stops
    reading at STREAM_OUTSTANDING unsent responses, and goes on as the client reads."""
    from serving.grpc_servicer import STREAM_OUTSTANDING

    total = STREAM_OUTSTANDING * 3
    pulled = 0

    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        nonlocal pulled
        for i in range(total):
            message = pb.ModelInferRequest(model_name="m", id=str(i))
            tensor = message.inputs.add(name="x", datatype="FP32", shape=[1])
            tensor.contents.fp32_contents.append(1.0)
            pulled += 1
            yield message

    async def consume() -> None:
        servicer = InferenceServicer(BuggyDataPlane())  # type: ignore[arg-type]
        stream = servicer.ModelStreamInfer(requests(), StreamContext())
        first = await anext(stream)
        assert not first.error_message
        await asyncio.sleep(0.3)  # the client reads nothing meanwhile
        assert pulled <= STREAM_OUTSTANDING + 1, pulled
        answered = 1 + len([item async for item in stream])
        assert (pulled, answered) == (total, total)

    asyncio.run(consume())
