"""`serving.grpc_errors.error_mapped`: what a servicer raises becomes the right gRPC status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from headrace.errors import HeadraceError, InvalidInput, ModelNotFound
from protos import grpc_service_pb2 as pb
from serving.grpc_errors import error_mapped

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
