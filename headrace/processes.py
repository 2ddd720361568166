"""Stopping child processes the CLI, the demo and the tests start: by pid, gracefully first."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 60.0) -> int:
    """SIGTERM and wait; SIGKILL if it has not exited after `timeout_s`. Its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)
