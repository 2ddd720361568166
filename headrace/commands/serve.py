"""`headrace serve`: the Open Inference Protocol gRPC server over a model repository."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import click

from headrace.commands.options import build_config, typed
from headrace.errors import ConfigError
from headrace.settings import load_settings

DEFAULT_TOKEN_ENV = "HEADRACE_AUTH_TOKEN"


def parse_version_policy(text: str) -> dict[str, object]:
    """`latest`, `latest:N`, `all` or `specific:1,3` -> VersionPolicy fields (N and the
    versions whole numbers >= 1)."""
    kind, _, arg = text.partition(":")
    numbers = arg.split(",") if arg else []
    if not all(n.isdigit() and int(n) >= 1 for n in numbers):
        numbers = []  # refused below
    if kind == "latest" and (not arg or len(numbers) == 1):
        return {"kind": "latest", "latest_n": int(arg or 1)}
    if kind == "all" and not arg:
        return {"kind": "all"}
    if kind == "specific" and numbers:
        return {"kind": "specific", "versions": [int(v) for v in numbers]}
    raise click.BadParameter(
        f"{text!r}: use latest, latest:N, all or specific:1,2 (N and versions >= 1)",
        param_hint="--version-policy",
    )


def _auth_token(variable: str) -> str | None:
    """The server's bearer token; a variable named by --auth-token-env must hold one."""
    from serving.auth import token_from_env

    token = token_from_env(variable)
    if token is None and variable != DEFAULT_TOKEN_ENV:
        raise click.BadParameter(
            f"${variable} is unset or empty; set it, or leave the flag out to serve without auth",
            param_hint="--auth-token-env",
        )
    if token is None and variable in os.environ:  # e.g. a secret that mounted empty
        click.echo(
            f"warning: ${variable} is set but empty: serving WITHOUT auth; put the token in "
            "it, or unset it to serve without auth on purpose",
            err=True,
        )
    return token


@click.command("serve")
@click.option("--repository", type=click.Path(path_type=Path), help="Model repository folder.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8001, show_default=True, help="gRPC port (0 = free).")
@click.option(
    "--metrics-port", type=int, default=8002, show_default=True, help="Prometheus /metrics port."
)
@click.option("--no-metrics", is_flag=True, help="Do not expose /metrics.")
@click.option("--batching/--no-batching", default=True, show_default=True)
@click.option(
    "--version-policy",
    default="latest",
    show_default=True,
    help="latest, latest:N, all or specific:1,2.",
)
@click.option(
    "--poll-interval-s",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds between repository scans for new versions (0 = off).",
)
@click.option("--grace-s", type=float, default=10.0, show_default=True, help="Drain time.")
@click.option(
    "--max-message-bytes", type=int, default=64 * 1024 * 1024, show_default=True,
    help="Largest gRPC message accepted.",
)  # fmt: skip
@click.option("--auth-token-env", default=DEFAULT_TOKEN_ENV, show_default=True,
              help="Environment variable holding the bearer token (unset = no auth).")  # fmt: skip
@click.option(
    "--auth-scope",
    type=click.Choice(["all", "control"]),
    default="all",
    show_default=True,
    help="Guard every RPC, or only load/unload/index.",
)
@click.option("--tls-cert", type=click.Path(path_type=Path, exists=True), help="PEM certificate.")
@click.option("--tls-key", type=click.Path(path_type=Path, exists=True), help="PEM private key.")
def serve(
    repository: Path | None,
    host: str,
    port: int,
    metrics_port: int,
    no_metrics: bool,
    batching: bool,
    version_policy: str,
    poll_interval_s: float,
    grace_s: float,
    max_message_bytes: int,
    auth_token_env: str,
    auth_scope: str,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Serve every model of the repository over gRPC (Open Inference Protocol).

    Prints one line `serving grpc=HOST:PORT metrics=PORT` when ready; stops
    gracefully on SIGTERM or Ctrl-C. The token is read from an environment
    variable so it never shows in the process list.
    """
    from serving.repository import ModelRepository
    from serving.server import InferenceServer, ServeConfig, serve_forever

    if no_metrics and typed("metrics_port"):
        raise ConfigError("--metrics-port and --no-metrics contradict each other: leave one out")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = build_config(
        ServeConfig,
        repository=repository or load_settings().model_repository,
        host=host,
        port=port,
        metrics_port=None if no_metrics else metrics_port,
        batching=batching,
        version_policy=parse_version_policy(version_policy),
        poll_interval_s=poll_interval_s,
        grace_s=grace_s,
        max_message_bytes=max_message_bytes,
        auth_token=_auth_token(auth_token_env),
        auth_scope=auth_scope,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )

    ModelRepository(config.repository).require_folder()

    def announce(server: InferenceServer) -> None:
        models = ", ".join(f"{n}:{v}" for n, v in server.manager.loaded().items()) or "none"
        click.echo(
            f"serving grpc={config.address_host}:{server.port} metrics={server.metrics_port} "
            f"models={models}",
            nl=True,
        )

    asyncio.run(serve_forever(config, announce))
