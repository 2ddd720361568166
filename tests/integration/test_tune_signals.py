"""`headrace tune` and `headrace tune view` stopped by SIGTERM stop their NNI experiment.

The commands run as subprocesses. Once a trial runs, every process under
`headrace tune` (NNI's node manager, the tuner dispatcher, the trial) is recorded
by pid; after SIGTERM the command must exit with 143 and print how to resume,
none of those processes may be left, and nothing is published. `tune view` of
the same experiment then exits 0 on SIGTERM and takes its node manager along.
Whatever happens, every process seen is killed by pid at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

SPACE = {"learning_rate": {"_type": "loguniform", "_value": [1e-3, 1e-2]}}
TRIAL_MODULE = "training.tuning.nni_trial"


def _cmdline(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())
    return ""


def _alive(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return list(process.children(recursive=True))
    return []


@pytest.fixture
def seen() -> Iterator[list[psutil.Process]]:
    """Processes the test started or saw under them; killed by pid at the end if still alive
    (with whatever a leftover node manager started since)."""
    recorded: list[psutil.Process] = []
    yield recorded
    alive = [p for p in recorded if _alive(p)]
    for process in list(alive):
        alive.extend(_descendants(process))
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)


class Command:
    """A headrace command as a subprocess, its stdout lines collected by a reader thread."""

    def __init__(self, argv: list[str], env: dict[str, str], seen: list[psutil.Process]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "headrace", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        seen.append(psutil.Process(self.process.pid))
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for_line(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                line = self.lines.get(timeout=left)
                if text in line:
                    return line
        raise AssertionError(f"no line with {text!r} in {timeout_s:g} s")

    def wait_for_child(self, text: str, timeout_s: float) -> list[psutil.Process]:
        """Every process under the command once one of them has `text` in its command line."""
        deadline = time.monotonic() + timeout_s
        parent = psutil.Process(self.process.pid)
        while time.monotonic() < deadline and self.process.poll() is None:
            found = _descendants(parent)
            if any(text in _cmdline(p) for p in found):
                return found
            time.sleep(0.1)
        raise AssertionError(f"no process running {text!r} (exit code {self.process.poll()})")

    def terminate(self, timeout_s: float = 60.0) -> tuple[int, str]:
        """SIGTERM; its exit code and stderr once it exited."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=timeout_s)
        return self.process.returncode, err


def test_sigterm_stops_the_experiment_of_tune_and_of_tune_view(
    tmp_path: Path, seen: list[psutil.Process]
) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    repo, tune_dir = tmp_path / "repo", tmp_path / "tune"
    env = {
        **os.environ,
        "HEADRACE_MODEL_REPOSITORY": str(repo),
        "HEADRACE_RUNS_DIR": str(tmp_path / "runs"),
    }
    argv = ["tune", "--trials", "4", "--epochs", "3", "--tuner", "Random"]
    argv += ["--search-space", str(space), "--experiment-dir", str(tune_dir)]
    tune = Command([*argv, "--experiment-id", "term1"], env, seen)
    tune.wait_for_line("experiment term1: web UI", timeout_s=120)
    running = tune.wait_for_child(TRIAL_MODULE, timeout_s=120)
    seen.extend(running)
    commands = [_cmdline(p) for p in running]
    assert any("main.js" in c for c in commands), commands  # NNI's node manager
    assert any("--exp_params" in c for c in commands), commands  # the tuner dispatcher

    code, err = tune.terminate()
    _, left = psutil.wait_procs(running, timeout=15)
    assert not left, [(p.pid, _cmdline(p)[:80]) for p in left]
    assert code == 128 + signal.SIGTERM, err
    assert "stopped experiment term1 on SIGTERM" in err
    assert f"headrace tune --resume term1 --experiment-dir {tune_dir}" in err
    assert not repo.exists() or not any(repo.iterdir())  # nothing published

    view = Command(["tune", "view", "term1", "--experiment-dir", str(tune_dir)], env, seen)
    view.wait_for_line("experiment term1: web UI", timeout_s=120)
    serving = [p for p in _descendants(psutil.Process(view.process.pid)) if _alive(p)]
    seen.extend(serving)
    assert any("main.js" in _cmdline(p) for p in serving)
    code, err = view.terminate()
    assert code == 0, err
    _, left = psutil.wait_procs(serving, timeout=15)
    assert not left, [(p.pid, _cmdline(p)[:80]) for p in left]
