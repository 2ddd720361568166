"""The README is tested like code: every command in its ```sh blocks runs and succeeds.

Commands run in order, as a user would type them, in a scratch folder with the
project's virtualenv first on PATH. `make` lines are in ```text blocks: CI runs
`make test` itself and the demo's training is covered by test_acceptance.
The MNIST line needs ../shared and runs in test_acceptance instead.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
NEEDS_SHARED = "../shared/"


def readme_commands() -> list[str]:
    """Command lines of the ```sh blocks, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = text.index("```")
    assert "make demo" in text[first_block : first_block + 200]
    assert "make test" in text[first_block : first_block + 200]


def test_every_readme_command_runs(tmp_path: Path) -> None:
    commands = readme_commands()
    assert any(c.startswith("headrace train") for c in commands)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO_ROOT)
    for key in ("HEADRACE_MODEL_REPOSITORY", "HEADRACE_RUNS_DIR", "HEADRACE_DATA_DIR"):
        env.pop(key, None)
    for command in commands:
        if NEEDS_SHARED in command:
            continue
        argv = shlex.split(command)
        if argv[0] == "python":
            argv[0] = sys.executable
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}\n{done.stderr}"
        if "--json" in argv:
            assert done.stdout.strip().startswith(("{", "[")), command
    assert (tmp_path / "model_repository" / "lenet5-digits" / "2" / "model.onnx").is_file()


@pytest.mark.parametrize("command", ["train", "check-grad", "data", "models"])
def test_help_on_every_command(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "headrace", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "Usage:" in done.stdout
