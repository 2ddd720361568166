"""The DDP compression hooks over real gloo collectives between two processes (no Ray).

`ddp_hook_driver.py` runs as ranks 0 and 1 on 127.0.0.1; these tests check what
DDP produced against the ranks' own local gradients, and the counted bytes
against the sizes of the buffers each hook must hand over.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace.processes import stop_process
from streams.broker import free_port

DRIVER = Path(__file__).with_name("ddp_hook_driver.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
WORLD = 2


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("hooks") / "result.json"
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(DRIVER), str(rank), str(WORLD), str(port), str(out)],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(WORLD)
    ]
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr[-3000:]
    finally:
        for proc in procs:
            stop_process(proc)
    return dict(json.loads(out.read_text()))


def _mean_local(step: dict[str, Any]) -> np.ndarray:
    return np.mean(np.array(step["locals"]), axis=0)


def test_uncompressed_hook_averages_and_counts_the_float32_bucket(hooks: dict[str, Any]) -> None:
    run = hooks["none"]
    for step in run["steps"]:
        np.testing.assert_allclose(step["ddp"], _mean_local(step), rtol=1e-5, atol=1e-7)
        assert step["bytes"] == run["numel"] * 4


def test_fp16_hook_halves_the_bytes(hooks: dict[str, Any]) -> None:
    run = hooks["fp16"]
    for step in run["steps"]:
        np.testing.assert_allclose(step["ddp"], _mean_local(step), rtol=1e-2, atol=1e-4)
        assert step["bytes"] == run["numel"] * 2


def test_topk_hook_sends_k_entries_and_error_feedback_keeps_the_rest(
    hooks: dict[str, Any],
) -> None:
    run = hooks["topk"]
    k = math.ceil(0.02 * run["numel"])
    applied = np.zeros(run["numel"])
    given = np.zeros(run["numel"])
    for step in run["steps"]:
        assert step["bytes"] == k * 4 * 2  # float32 values + int32 indices, gathered
        assert np.count_nonzero(step["ddp"]) <= WORLD * k
        applied += np.array(step["ddp"]) * WORLD
        given += np.sum(np.array(step["locals"]), axis=0)
    held_back = np.sum(np.array(run["residuals"]), axis=0)
    np.testing.assert_allclose(applied + held_back, given, rtol=1e-4, atol=1e-5)


def test_powersgd_hook_compresses_after_its_warmup(hooks: dict[str, Any]) -> None:
    run = hooks["powersgd"]
    full = run["numel"] * 4
    assert [step["bytes"] for step in run["steps"][:2]] == [full, full]  # warm-up steps
    rows, cols = 30, 40
    for step in run["steps"][2:]:
        assert step["bytes"] == (rows + cols) * 1 * 4  # P and Q of rank 1
        assert step["bytes"] * 10 < full


def test_local_sgd_averages_parameters_every_period(hooks: dict[str, Any]) -> None:
    run = hooks["local_sgd"]
    assert [step["bytes"] for step in run["steps"]] == [0, 0, run["numel"] * 4]
    unsynced = np.array(run["unsynced"])
    assert not np.allclose(unsynced[0], unsynced[1])  # the workers did drift apart
    np.testing.assert_allclose(run["params"], unsynced.mean(axis=0), rtol=1e-5, atol=1e-6)
