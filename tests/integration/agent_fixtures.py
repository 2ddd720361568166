"""Starting `headrace train agent` for a test: a real process on a local Ray, ready when it
prints its ready line, always stopped by pid when the block exits."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from server_fixtures import REPO_ROOT, wait_for_ready_line

from headrace.processes import stop_process

AGENT_READY = "training agent ready"


@dataclass
class AgentProcess:
    process: subprocess.Popen[str]
    fields: dict[str, str]  # the ready line's key=value pairs (group, bootstrap, metrics, ...)
    log_file: Path

    def log_tail(self) -> str:
        return self.log_file.read_text()[-3000:]


@contextlib.contextmanager
def running_agent(
    bootstrap: str,
    repository: Path,
    runs_dir: Path,
    group: str,
    log_file: Path,
    args: Sequence[str] = (),
    ray_cpus: int = 2,
    ready_timeout_s: float = 120.0,
) -> Iterator[AgentProcess]:
    """`headrace train agent` until its ready line; stopped (SIGTERM, then SIGKILL) at the end."""
    command = [sys.executable, "-m", "headrace", "train", "agent", "--bootstrap", bootstrap,
               "--repository", str(repository), "--runs-dir", str(runs_dir),
               "--ray-cpus", str(ray_cpus), "--group", group, *args]  # fmt: skip
    with log_file.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True
        )
    agent = AgentProcess(process, {}, log_file)
    try:
        line = wait_for_ready_line(process, AGENT_READY, log_file, "the agent", ready_timeout_s)
        agent.fields = dict(p.split("=", 1) for p in line.split()[3:])
        yield agent
    finally:
        stop_process(process, 60.0)
