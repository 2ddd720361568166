"""What a Faust app leaves behind on disk: nothing, once its process has exited."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_MAKE_APP = (
    "from streams.faust_app import new_app\n"
    "app = new_app('test-datadir', ['kafka://127.0.0.1:1'])\n"  # never started: no broker
    "print(app.conf.datadir)\n"
)


def test_the_faust_data_folder_is_removed_when_the_process_exits(tmp_path: Path) -> None:
    """Every app left an empty folder under /tmp/headrace-faust, one per consumer group:
    hundreds after a test run."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _MAKE_APP], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    datadir = Path(done.stdout.strip().splitlines()[-1])
    assert datadir.is_relative_to(tmp_path), datadir  # it was made there...
    assert not [p for p in tmp_path.iterdir() if "faust" in p.name]  # ...and is gone
