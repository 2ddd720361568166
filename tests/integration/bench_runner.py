"""Runs a benchmark module the way its smoke tests need: from the repository root (where this
project's `benchmarks` package shadows opacus's), failing with its stderr if it fails."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(
    args: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """`python ARGS` (e.g. `-m benchmarks.x --quick`): (its final JSON line, all its stdout)."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=None if env is None else dict(env),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result, done.stdout
