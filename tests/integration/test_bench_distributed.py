"""Smoke test of the distributed benchmark, and of its rate-limited namespace link."""

from __future__ import annotations

import subprocess
import sys

import pytest
from bench_runner import run_benchmark

from benchmarks.netns import limited_link, namespaces_unavailable, tx_bytes

COMMAND = ["-m", "benchmarks.distributed", "--quick", "--skip-limited"]
KEYS = ("allreduce_bytes", "topk_bytes", "powersgd_bytes", "allreduce_acc", "topk_acc",
        "powersgd_acc", "limited_link_speedup")  # fmt: skip


def test_quick_distributed_benchmark_reports_counted_bytes() -> None:
    result, stdout = run_benchmark(COMMAND, timeout_s=300)
    for key in KEYS:
        assert result[key] is not None, key
    assert result["allreduce_bytes"] > 10 * result["topk_bytes"] > 0
    assert result["allreduce_bytes"] > result["powersgd_bytes"] > 0
    assert result["limited_link"]["mode"] == "simulated"
    assert set(result["goals"]) == {"ge_10x_fewer_bytes_le_1pt_loss", "limited_link_ge_1_4x"}
    assert "s/epoch" in stdout  # the table came before the JSON line


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def test_limited_link_carries_traffic_and_is_removed() -> None:
    why = namespaces_unavailable()
    if why is not None:
        pytest.skip(why)
    with limited_link("10mbit") as link:
        assert set(link.namespaces) <= _namespaces()
        sent = tx_bytes(link)
        send = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.sendto(b'x' * 1000, ('{link.addresses[1]}', 9))"
        )
        subprocess.run(
            ["ip", "netns", "exec", link.namespaces[0], sys.executable, "-c", send],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        assert tx_bytes(link) >= sent + 1000
    assert not set(link.namespaces) & _namespaces()  # removed, veth ends with them
