"""A bandwidth-limited link between two network namespaces, and workers started inside them.

`limited_link(rate)` creates two namespaces joined by a veth pair, addresses
198.51.100.1/24 and .2 (TEST-NET-2, a documentation range: it routes nowhere,
and this host's own 192.0.2.0/24 is left alone), loopback up in each, and a
`tbf` qdisc with the given rate on both ends (`netem` is not available on
this kernel, so there is no added delay, only the rate limit). Names carry
this process's id, so concurrent runs do not collide. Everything is deleted
on exit, also after an error: deleting a namespace deletes its veth end.
Only addresses inside these private namespaces are used.

`run_standalone_pair` starts the two ranks of `training.distributed.standalone`
(one per namespace, or both on 127.0.0.1 without a link) and waits for them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from headrace.processes import stop_process

SUBNET_PREFIX = "198.51.100"
# A namespace created here has no sockets yet, so a fixed port inside it is free.
RENDEZVOUS_PORT = 29511
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LinkPair:
    """Two namespaces, their veth ends and addresses, and the link's rate."""

    namespaces: tuple[str, str]
    interfaces: tuple[str, str]
    addresses: tuple[str, str]
    rate: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def namespaces_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_NET_ADMIN"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is missing (iproute2)"
    probe = f"hrprobe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"`ip netns add` failed: {getattr(exc, 'stderr', '') or exc}".strip()
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@contextmanager
def limited_link(
    rate: str = "10mbit", burst: str = "32kbit", latency: str = "50ms"
) -> Iterator[LinkPair]:
    """Two namespaces joined by a veth pair shaped with `tbf`; removed on exit."""
    tag = str(os.getpid())
    namespaces = (f"hrbench-{tag}-0", f"hrbench-{tag}-1")
    interfaces = (f"hrb{tag}a", f"hrb{tag}b")
    addresses = (f"{SUBNET_PREFIX}.1", f"{SUBNET_PREFIX}.2")
    created: list[str] = []
    try:
        for ns in namespaces:
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("link", "add", interfaces[0], "type", "veth", "peer", "name", interfaces[1])
        for ns, iface, address in zip(namespaces, interfaces, addresses, strict=True):
            _ip("link", "set", iface, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", iface)
            _ip("-n", ns, "link", "set", iface, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", iface, "root", "tbf",
                 "rate", rate, "burst", burst, "latency", latency],
                check=True, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
        yield LinkPair(namespaces, interfaces, addresses, rate)
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def tx_bytes(pair: LinkPair) -> int:
    """Bytes both veth ends have sent so far (frames on the wire, headers included)."""
    total = 0
    for ns, iface in zip(pair.namespaces, pair.interfaces, strict=True):
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{iface}/statistics/tx_bytes"],
            check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        total += int(done.stdout.strip())
    return total


def run_standalone_pair(
    spec_path: Path, pair: LinkPair | None, timeout_s: float, log_dir: Path, port: int
) -> float:
    """Run ranks 0 and 1 to the end (in `pair`'s namespaces, else on 127.0.0.1); wall seconds."""
    master = f"{pair.addresses[0]}:{RENDEZVOUS_PORT}" if pair else f"127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    started = time.perf_counter()
    try:
        for rank in range(2):
            command = [
                sys.executable, "-m", "training.distributed.standalone", "--spec", str(spec_path),
                "--rank", str(rank), "--world", "2", "--master", master,
            ]  # fmt: skip
            if pair is not None:
                command = [
                    "ip", "netns", "exec", pair.namespaces[rank],
                    "env", f"GLOO_SOCKET_IFNAME={pair.interfaces[rank]}", *command,
                ]  # fmt: skip
            log = open(log_dir / f"rank{rank}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(
                subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
            )
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            if code != 0:
                tail = (log_dir / f"rank{procs.index(proc)}.log").read_text(errors="replace")
                raise RuntimeError(f"a standalone worker exited with {code}:\n{tail[-2000:]}")
        return time.perf_counter() - started
    finally:
        for proc in procs:
            stop_process(proc, timeout_s=10)
        for log in logs:
            log.close()
