"""The README is tested like code: every command in its ```sh blocks runs and succeeds.

Commands run in order, as a user would type them, in a scratch folder with the
project's virtualenv first on PATH. A line ending in `&` starts a server in the
background: it is started on free ports (port 0) instead of the README's fixed
ones, later lines talk to the ports it really got, and the test stops it.
`make` lines are in ```text blocks: CI runs `make test` itself and the demo's
training is covered by test_acceptance.
The MNIST line needs ../shared and runs in test_acceptance instead.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka_fixtures import external_bootstrap, prepare_external

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


def start_background(
    argv: list[str], cwd: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start a `headrace serve ... &` line on free ports; map README addresses to real ones."""
    readme_ports = {}
    for flag in ("--port", "--metrics-port"):
        if flag in argv:
            at = argv.index(flag) + 1
            readme_ports[flag], argv[at] = argv[at], "0"
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        for line in process.stdout:  # servers and workers print one line when ready
            if line.startswith(
                ("stream worker ready ", "training agent ready ", "data ingest ready ")
            ):
                return process, {}
            if line.startswith("serving grpc="):
                fields = dict(re.findall(r"(grpc|metrics)=(\S+)", line))
                host = fields["grpc"].rsplit(":", 1)[0]
                return process, {
                    f"{host}:{readme_ports['--port']}": fields["grpc"],
                    f"{host}:{readme_ports['--metrics-port']}": f"{host}:{fields['metrics']}",
                }
    except BaseException:
        process.kill()
        process.wait()
        raise
    process.wait(timeout=30)
    raise AssertionError(f"{argv} exited with {process.returncode} before it was ready")


def test_every_readme_command_runs(tmp_path: Path) -> None:
    commands = readme_commands()
    assert any(c.startswith("headrace train") for c in commands)
    if external_bootstrap():  # the Kafka commands then run on it: start from empty topics
        prepare_external(str(external_bootstrap()))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO_ROOT)
    for key in (
        "HEADRACE_MODEL_REPOSITORY", "HEADRACE_RUNS_DIR", "HEADRACE_DATA_DIR", "HEADRACE_DATA_ROOT"
    ):  # fmt: skip
        env.pop(key, None)
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")  # README runs from the root
    background: list[subprocess.Popen[str]] = []
    outputs: list[str] = []
    addresses: dict[str, str] = {}
    try:
        for command in commands:
            if NEEDS_SHARED in command:
                continue
            for readme_address, real_address in addresses.items():
                command = command.replace(readme_address, real_address)
            argv = shlex.split(command.removesuffix("&"))
            if argv[0] == "python":
                argv[0] = sys.executable
            if command.endswith("&"):
                process, mapping = start_background(argv, tmp_path, env)
                background.append(process)
                addresses.update(mapping)
                continue
            started = time.monotonic()
            done = subprocess.run(
                argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
            )
            print(f"{time.monotonic() - started:6.1f} s  {command}")  # shown with -rP or -s
            assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)
            if "--json" in argv:
                assert done.stdout.strip().startswith(("{", "[")), command
    finally:
        for process in background:  # workers before the broker they talk to
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # The broker the README started (it says to stop it by hand): stop it by its pid.
        subprocess.run(
            [sys.executable, "-m", "headrace", "broker", "stop"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=60,
        )
    assert all(process.returncode == 0 for process in background)  # drained cleanly
    assert (tmp_path / "model_repository" / "lenet5-digits" / "2" / "model.onnx").is_file()
    assert any("250 results" in out for out in outputs)  # every README request was answered


@pytest.mark.parametrize("command", ["train", "check-grad", "data", "models", "tune", "compress"])
def test_help_on_every_command(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "headrace", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "Usage:" in done.stdout
