"""Child processes of a benchmark: pinned to cores, waited on by readiness, always stopped.

`Processes` starts each server with its CPU affinity set before it runs
(`os.sched_setaffinity` in `preexec_fn`, so everything it spawns inherits it),
in its own session, with stdout and stderr in log files. A server is ready
when its stdout shows the line it prints once listening. `stop_all()` sends
SIGTERM to each process by pid, waits, then SIGKILLs what is left, including
any descendant still in the child's session (Ray's raylet and workers).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

READY_POLL_S = 0.05


class StartError(RuntimeError):
    """A child process exited or never printed its ready line."""


@dataclass
class Child:
    """One started process and its log files."""

    name: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, chars: int = 3000) -> str:
        text = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return text[-chars:]


def session_members(sid: int) -> list[int]:
    """Pids of live processes whose session id is `sid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 4 and int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


class Processes:
    """Starts, pins and stops the benchmark's child processes (see the module docstring)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(
        self, name: str, argv: list[str], cpus: set[int] | None, env: dict[str, str] | None = None
    ) -> Child:
        stdout = self.log_dir / f"{name}.out"
        stderr = self.log_dir / f"{name}.err"

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                preexec_fn=pin,
                start_new_session=True,
                env=env,
            )
        child = Child(name, proc, stdout, stderr)
        self.children.append(child)
        return child

    def wait_ready(self, child: Child, pattern: str, timeout_s: float) -> re.Match[str]:
        """Wait until the child's stdout has a line matching `pattern`; the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            text = child.stdout.read_text(errors="replace") if child.stdout.exists() else ""
            match = regex.search(text)
            if match:
                return match
            if child.proc.poll() is not None:
                raise StartError(
                    f"{child.name} exited with {child.proc.returncode} before it was ready:\n"
                    + child.tail()
                )
            if time.monotonic() > deadline:
                raise StartError(
                    f"{child.name} not ready after {timeout_s:.0f} s:\n" + child.tail()
                )
            time.sleep(READY_POLL_S)

    def stop(self, child: Child, timeout_s: float = 30.0) -> None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL it and its session's leftovers."""
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        # The child led its own session: whatever is still in it was started by it.
        leftovers = session_members(child.pid)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.1)
            leftovers = session_members(child.pid)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)
