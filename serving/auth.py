"""Bearer-token authentication for the gRPC server.

With a token configured, calls must carry `authorization: Bearer <token>`
metadata. Scope `all` guards every inference RPC; scope `control` guards only
the control plane (repository load/unload/index). The control plane is
guarded whenever auth is on. Health checks and reflection stay open so probes
and tools work.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import grpc

from headrace.errors import ConfigError, Unauthenticated
from serving.grpc_errors import Behavior, abort_for, replace_behavior

SERVICE_PREFIX = "/inference.GRPCInferenceService/"
CONTROL_METHODS = frozenset(
    f"{SERVICE_PREFIX}{name}"
    for name in ("RepositoryModelLoad", "RepositoryModelUnload", "RepositoryIndex")
)
AuthScope = Literal["all", "control"]
# What a bearer token may hold (RFC 6750's token68); gRPC metadata carries printable ASCII only.
TOKEN = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")


def token_from_env(variable: str) -> str | None:
    """The bearer token in environment variable `variable`, surrounding whitespace (a secret
    file's trailing newline) removed; None when it is unset or empty. A ConfigError when it
    holds characters no client could send."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return None
    if not TOKEN.match(value):
        raise ConfigError(
            f"the token in ${variable} holds characters a bearer token cannot carry; use "
            "letters, digits and . _ ~ + / - (base64 or hex secrets fit)"
        )
    return value


def token_matches(metadata: tuple[tuple[str, Any], ...] | None, token: str) -> bool:
    """Whether the call's metadata holds `authorization: Bearer <token>` (constant time)."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, given = text.partition(" ")
            matches = hmac.compare_digest(given.strip().encode(), token.encode())
            if scheme.lower() == "bearer" and matches:
                return True
    return False


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses guarded calls without the right token, with UNAUTHENTICATED."""

    def __init__(self, token: str, scope: AuthScope = "all") -> None:
        if not token:
            raise ValueError("an auth token must not be empty")
        self.token = token
        self.scope = scope

    def guards(self, method: str) -> bool:
        if method in CONTROL_METHODS:
            return True
        return self.scope == "all" and method.startswith(SERVICE_PREFIX)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.guards(method):
            return handler
        if token_matches(handler_call_details.invocation_metadata, self.token):
            return handler
        refusal = Unauthenticated(
            "missing or wrong token: send metadata 'authorization: Bearer <token>'"
        )

        def deny(_behavior: Behavior, streaming: bool) -> Behavior:
            async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
                await abort_for(refusal, context, method)

            async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
                await abort_for(refusal, context, method)
                yield None  # pragma: no cover - abort raises first

            return refuse_stream if streaming else refuse

        return replace_behavior(handler, deny)
