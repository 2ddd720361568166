"""A publisher SIGKILLed mid-copy leaves no visible version, and the next publish cleans up.

The child process publishes version 1 from a 50 MB file, then publishes again
from a FIFO. The test feeds the FIFO 8 MiB of the 50 MB and SIGKILLs the child
while it waits for the rest, so its staging folder holds a half-written
model.onnx. Every step waits on an event (a line printed by the child, the FIFO
being opened, a blocking write into the FIFO), never on a sleep.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from serving.model_config import ModelConfig, TensorSpec
from serving.repository import ModelRepository

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL_BYTES = 50 * 1000 * 1000
FED_BYTES = 8 * 1024 * 1024
"""Bytes written into the FIFO before the kill. A blocking write returns once the child has
read all but one pipe buffer (64 KiB) of them, so its staging copy then holds several MiB."""

PUBLISHER = """
import sys
from pathlib import Path

from serving.model_config import ModelConfig, TensorSpec
from serving.repository import ModelRepository

root, model_file, fifo = map(Path, sys.argv[1:4])
config = ModelConfig(
    name="big",
    inputs=[TensorSpec(name="pixels", dims=[1, 8, 8])],
    outputs=[TensorSpec(name="logits", dims=[10])],
)
repo = ModelRepository(root)
print(f"published {repo.publish(config, model_file, architecture='lenet5').version}", flush=True)
repo.publish(config, fifo, architecture="lenet5")  # blocks reading the FIFO until killed
print("second publish finished", flush=True)
"""


def _config() -> ModelConfig:
    return ModelConfig(
        name="big",
        inputs=[TensorSpec(name="pixels", dims=[1, 8, 8])],
        outputs=[TensorSpec(name="logits", dims=[10])],
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@pytest.mark.timeout(120)  # a child that dies before opening the FIFO would block open() forever
def test_killed_publish_leaves_no_version(tmp_path: Path) -> None:
    data = os.urandom(MODEL_BYTES)
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(data)
    fifo = tmp_path / "stream.onnx"
    os.mkfifo(fifo)
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    root = tmp_path / "repo"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
        ),
    }

    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), str(model_file), str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    fd = -1
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line == "published 1\n", f"publisher failed: {line!r} {proc.stderr.read()}"
        # Opening blocks until the child opens the FIFO for reading: its staging folder exists.
        fd = os.open(fifo, os.O_WRONLY)
        _write_all(fd, data[:FED_BYTES])  # returns once the child has read nearly all of it
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        if fd >= 0:
            os.close(fd)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    model_dir = root / "big"
    [staging] = [p for p in model_dir.iterdir() if p.name.startswith(".")]
    assert staging.name.startswith(f".staging.{proc.pid}.")
    half = (staging / "model.onnx").stat().st_size
    assert FED_BYTES // 2 < half < MODEL_BYTES, "the copy was not cut off mid-way"
    assert not (staging / "metadata.json").exists()
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == [
        "1",
        "config.json",
    ]

    repo = ModelRepository(root)
    assert repo.versions("big") == [1]
    assert repo.list_models() == ["big"]
    v1 = repo.get("big")
    assert v1.version == 1
    assert v1.metadata.sha256["model.onnx"] == hashlib.sha256(data).hexdigest()
    v1.verify()

    v2 = repo.publish(_config(), model_file, architecture="lenet5")
    assert v2.version == 2
    assert repo.versions("big") == [1, 2]
    assert not staging.exists(), "the dead publisher's staging folder was not removed"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "config.json"]
    v2.verify()
    assert v2.model_file.stat().st_size == MODEL_BYTES
