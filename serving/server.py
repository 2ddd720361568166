"""Assembles the inference server: gRPC (OIP + health + reflection), metrics, reload, scaling.

`InferenceServer.start()` loads the repository, starts grpc.aio on the
configured port (0 = a free one) and the Prometheus endpoint; `stop()` drains:
readiness goes NOT_SERVING at once, new calls are refused, in-flight calls
finish within the grace period, then the models are closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from pydantic import BaseModel, ConfigDict, Field, model_validator

from headrace.errors import ConfigError
from headrace.gc_pauses import prepare_for_serving
from protos import grpc_service_pb2, grpc_service_pb2_grpc
from serving.auth import BearerTokenInterceptor
from serving.autoscaler import Autoscaler
from serving.batcher import BatchTiming
from serving.dataplane import DataPlane
from serving.grpc_errors import Unimplemented, error_mapped
from serving.grpc_servicer import InferenceServicer
from serving.metrics import ServingMetrics
from serving.model_manager import ModelManager
from serving.repository import ModelRepository
from serving.version_policy import VersionPolicy

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# A draining server stops grpc once no inference call has arrived for this long.
BACKLOG_QUIET_S = 0.2


class ServeConfig(BaseModel):
    """Settings of `headrace serve`."""

    model_config = ConfigDict(extra="forbid")

    repository: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        default=8002, ge=0, le=65535, description="Prometheus port; None disables it."
    )
    batching: bool = True
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    poll_interval_s: float = Field(default=2.0, ge=0, description="Repository polling; 0 = off.")
    autoscale_interval_s: float = Field(default=1.0, gt=0)
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    grace_s: float = Field(default=10.0, ge=0, description="Drain time for in-flight calls.")
    auth_token: str | None = Field(default=None, description="Bearer token; None = no auth.")
    auth_scope: Literal["all", "control"] = "all"
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def address_host(self) -> str:
        """The host as written before ':port' in an address: an IPv6 one in brackets."""
        bare = self.host.strip("[]")
        return f"[{bare}]" if ":" in bare else bare

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        return self


class InferenceServer:
    """One server process: the model manager and everything exposed over the network."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.health = health_aio.HealthServicer()
        self.metrics = ServingMetrics(self._live_state, privacy=self._privacy_state)
        self.manager = ModelManager(
            ModelRepository(config.repository),
            policy=config.version_policy,
            batching=config.batching,
            on_change=self._on_model_change,
            on_execute=self._on_execute,
            on_load_failure=self.metrics.observe_load_failure,
        )
        self.dataplane = DataPlane(self.manager, self.metrics, after_load=self._mark_failed_models)
        self.autoscaler = Autoscaler(self.manager, self.metrics)
        self.port = 0
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed_models: set[str] = set()  # marked NOT_SERVING for a failed load

    def _live_state(self) -> list[tuple[str, str, int, int, int]]:
        rows = []
        for name, versions in self.manager.loaded().items():
            for version in versions:
                loaded = self.manager.get(name, version)
                batcher = loaded.batcher
                rows.append(
                    (
                        name,
                        str(version),
                        batcher.queue_depth,
                        batcher.in_flight,
                        loaded.model.instances,
                    )
                )
        return rows

    def _privacy_state(self) -> list[tuple[str, str, float, float]]:
        rows = []
        for name, versions in self.manager.loaded().items():
            for version in versions:
                meta = self.manager.get(name, version).metadata
                if meta.dp_epsilon is not None and meta.dp_delta is not None:
                    rows.append((name, str(version), meta.dp_epsilon, meta.dp_delta))
        return rows

    def _on_execute(self, name: str, version: int, batch: BatchTiming) -> None:
        self.metrics.observe_execution(name, version, batch.rows)
        self.dataplane.count_execution(name, str(version), batch)

    def _on_model_change(self, name: str, versions: list[int]) -> None:
        status = SERVING if versions else NOT_SERVING
        self._failed_models.discard(name)
        self._track(asyncio.get_running_loop().create_task(self.health.set(name, status)))

    async def _mark_failed_models(self) -> None:
        """A repository model that failed to load and serves no version answers NOT_SERVING
        on health checks (a model the server never heard of answers NOT_FOUND)."""
        loaded = self.manager.loaded()
        for name in self.manager.failures():
            if not loaded.get(name) and name not in self._failed_models:
                self._failed_models.add(name)
                await self.health.set(name, NOT_SERVING)

    def _track(self, task: asyncio.Task[None]) -> None:
        """Keep a background task referenced until it ends (and no longer)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.config.auth_token:
            interceptors.append(
                BearerTokenInterceptor(self.config.auth_token, self.config.auth_scope)
            )
        return interceptors

    async def start(self) -> None:
        """Bind the ports (a bad address, port or certificate fails before any model is
        loaded), load the repository, then serve."""
        cfg = self.config
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(interceptors=self._interceptors(), options=options)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            error_mapped(InferenceServicer(self.dataplane), INFERENCE_SERVICE), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        service_names = (
            INFERENCE_SERVICE.full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(service_names, server)
        server.add_generic_rpc_handlers((Unimplemented(),))  # last: see its docstring
        self.port = _bind(server, cfg)
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.host.strip("[]"))
        await self.manager.load_all()
        await server.start()
        self._server = server
        await self.health.set("", SERVING)
        for name, versions in self.manager.loaded().items():
            await self.health.set(name, SERVING if versions else NOT_SERVING)
        await self._mark_failed_models()
        if cfg.poll_interval_s > 0:
            polling = self.manager.run_polling(
                cfg.poll_interval_s, self._stop, after_each=self._mark_failed_models
            )
            self._track(asyncio.create_task(polling))
        self._track(asyncio.create_task(self.autoscaler.run(cfg.autoscale_interval_s, self._stop)))
        auth = f"bearer token ({cfg.auth_scope})" if cfg.auth_token else "off"
        log.info("serving on %s:%d (auth %s, tls %s)", cfg.address_host, self.port, auth,
                 "on" if cfg.tls_cert else "off")  # fmt: skip

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain and stop: NOT_SERVING first, then refuse new calls and finish in-flight ones.

        grpc's own stop cancels every call it has received but not yet handed to a handler
        (a busy server holds many). So the calls already received are let in first, each
        refused as UNAVAILABLE (retryable elsewhere), until no inference call has arrived for
        `BACKLOG_QUIET_S` or half the grace period has passed; then grpc stops with the rest.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        began = time.monotonic()
        grace = self.config.grace_s if grace_s is None else grace_s
        self.dataplane.draining = True
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._let_received_calls_in(until=began + grace / 2)
            await self._server.stop(max(0.0, grace - (time.monotonic() - began)))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.manager.close()

    async def _let_received_calls_in(self, until: float) -> None:
        while time.monotonic() < until:
            if time.monotonic() - self.dataplane.last_request_at >= BACKLOG_QUIET_S:
                return
            await asyncio.sleep(BACKLOG_QUIET_S / 10)

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def _bind_problem(host: str, port: int) -> str | None:
    """Why no address of `host` can listen on `port` (None when one can), as the OS says.

    Asked before grpc binds: grpc's own refusal comes with a line of its C++ log on stderr
    ('E... add_port.cc:83] Failed to add port to server: ...'), ahead of headrace's message.
    Like grpc, it is enough that one of the host's addresses takes the port, and
    SO_REUSEADDR lets a port held only by closed connections (TIME_WAIT) be taken again."""
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        return f"{host!r} is not a host name or address here ({exc})"
    problem = "no address"
    for family, kind, proto, _, sockaddr in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
                probe.listen()
            return None
        except OSError as exc:
            problem = exc.strerror or str(exc)
    return problem


def _bind(server: grpc.aio.Server, cfg: ServeConfig) -> int:
    """Add the listening port (TLS when configured); a ConfigError says why it cannot be."""
    address = f"{cfg.address_host}:{cfg.port}"
    problem = _bind_problem(cfg.host, cfg.port)
    if problem is not None:
        raise ConfigError(
            f"cannot listen on {address}: {problem}; pick another --port (0 picks a free one) "
            "or a --host that is an address of this machine"
        )
    credentials = None
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        try:  # grpc only says "failed to bind" for a key that does not fit its certificate
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                cfg.tls_cert, cfg.tls_key
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"--tls-cert {cfg.tls_cert} and --tls-key {cfg.tls_key} are not a PEM "
                f"certificate and its private key ({exc})"
            ) from None
        credentials = grpc.ssl_server_credentials(
            [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())]
        )
    try:
        if credentials is not None:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError:
        raise ConfigError(
            f"cannot listen on {address}: the port is taken or the host is not an address of "
            "this machine; pick another --port (0 picks a free one) or --host"
        ) from None


async def serve_forever(
    config: ServeConfig, on_ready: Callable[[InferenceServer], None] | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    server = InferenceServer(config)
    await server.start()
    prepare_for_serving()  # models loaded: fewer and shorter collections from here on
    if on_ready is not None:
        on_ready(server)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop()
