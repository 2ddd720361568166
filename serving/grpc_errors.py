"""The one place where errors become gRPC statuses: a wrapper around every method of
headrace's inference service (grpc's own health and reflection services are
registered as they come).

A `HeadraceError` carries its status name and a message written for the
client. Anything else is a server fault: it is logged with its traceback and
the client sees INTERNAL with no internal detail (paths, keys, stack). A method the
server does not have (Triton's shared memory, trace and log settings RPCs) is
UNIMPLEMENTED naming it, from a handler registered after every service.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from headrace.errors import HeadraceError

log = logging.getLogger(__name__)

Behavior = Callable[..., Any]
# What a client hears of a server fault (the traceback goes to the server log).
INTERNAL_MESSAGE = "internal server error; see the server log"
# Longest status message sent, in UTF-8 bytes. Messages quote what the request said (a model
# name, a version), and grpc sends the message percent-encoded (3 bytes for each byte that is
# not printable ASCII) in trailers that clients refuse above 8 KiB now and then (grpc's soft
# limit) and above 16 KiB always: a longer one reached the client as RESOURCE_EXHAUSTED
# "received metadata size exceeds soft (or hard) limit", not as its own status.
MAX_MESSAGE_BYTES = 2048


def client_message(message: str) -> str:
    """`message` as sent to a client: cut at MAX_MESSAGE_BYTES of UTF-8 when longer."""
    encoded = message.encode()
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return message
    kept = encoded[:MAX_MESSAGE_BYTES].decode(errors="ignore")  # no half character
    return f"{kept}... ({len(message) - len(kept)} more characters cut)"


def status_code(error: HeadraceError) -> grpc.StatusCode:
    """The gRPC status a headrace error maps to (INTERNAL if its name is unknown)."""
    return getattr(grpc.StatusCode, error.grpc_status, grpc.StatusCode.INTERNAL)


async def abort_for(error: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    """Abort the call with the status that `error` maps to."""
    if isinstance(error, HeadraceError):
        await context.abort(status_code(error), client_message(error.message))
    log.exception("internal error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _wrap_unary(behavior: Behavior, method: str) -> Behavior:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await abort_for(exc, context, method)

    return wrapped


def _wrap_streaming(behavior: Behavior, method: str) -> Behavior:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await abort_for(exc, context, method)

    return wrapped


def replace_behavior(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior, bool], Behavior]
) -> grpc.RpcMethodHandler:
    """A copy of `handler` whose behaviour is `wrap(behaviour, is_streaming_response)`."""
    common = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **common)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **common)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **common)


def error_mapped(servicer: Any, service: ServiceDescriptor) -> SimpleNamespace:
    """What to register instead of `servicer`: each of `service`'s methods, wrapped once so
    that whatever it raises becomes a gRPC status. (An interceptor would do the same, but
    grpc.aio runs the interceptor chain, a coroutine per interceptor, on every call.)"""
    mapped = SimpleNamespace()
    for method in service.methods:
        behavior = getattr(servicer, method.name)
        name = f"/{service.full_name}/{method.name}"
        # A streaming handler is an async generator (yields its responses) or a coroutine
        # that writes them with context.write(): wrap it as it is.
        if method.server_streaming and not inspect.iscoroutinefunction(behavior):
            setattr(mapped, method.name, _wrap_streaming(behavior, name))
        else:
            setattr(mapped, method.name, _wrap_unary(behavior, name))
    return mapped


class Unimplemented(grpc.GenericRpcHandler):
    """Answers any method no service before it took with UNIMPLEMENTED naming the method
    (grpc's own answer is a bare 'Method not found!'). Register it last: grpc asks the
    handlers in order, so the served methods never reach it."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method} is not offered by this server; ServerMetadata lists the protocol "
                "extensions it implements",
            )

        # stream-stream fits a call of any arity: nothing is read before the refusal
        return grpc.stream_stream_rpc_method_handler(refuse)
