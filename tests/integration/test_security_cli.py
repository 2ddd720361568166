"""`headrace train --adversarial pgd` then `headrace security robustness` on the published model,
as a user runs them (subprocesses), and the errors they print for bad flags or tampered files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.repository import ModelRepository

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "lenet5-wide-digits"


def headrace(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "headrace", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_adversarial_training_then_robustness_report(tmp_path: Path) -> None:
    done = headrace(
        "train", "--model", "lenet5-wide", "--dataset", "digits", "--epochs", "1",
        "--adversarial", "pgd", "--adv-epsilon", "0.2", "--adv-steps", "2", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["version"] == 1
    version = ModelRepository(tmp_path / "model_repository").get(NAME)
    assert 0.0 <= version.metadata.metrics["test_robust_accuracy"] <= 1.0
    assert json.loads(str(version.metadata.lineage["adversarial_training"]))["steps"] == 2
    assert version.metadata.lineage["val_fraction"] == 0.1

    done = headrace(
        "security", "robustness", "--model", NAME, "--limit", "30", "--steps", "3", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["model"], result["version"], result["dataset"]) == (NAME, 1, "digits")
    report = result["report"]
    assert report["samples"] == 30 and report["pgd_steps"] == 3
    assert [row["epsilon"] for row in report["rows"]] == [0.0, 0.1, 0.2, 0.3]
    assert report["rows"][0]["pgd_accuracy"] == report["clean_accuracy"]

    # a compressed version (no torch weights) on top: the default is still the one to attack
    repo = ModelRepository(tmp_path / "model_repository")
    lineage: dict[str, str | int | float | bool | None] = {
        "compressed_from": f"{NAME}:1",
        "compression": "int8",
    }
    published = repo.publish(
        version.config, version.model_file, architecture="lenet5-wide", lineage=lineage
    )
    assert published.version == 2
    done = headrace("security", "robustness", "--model", NAME, "--limit", "5", "--json",
                    cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout)["version"] == 1, done.stderr[-3000:]

    weights = version.path / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-10])  # tampered after publishing
    refused = headrace("security", "robustness", "--model", NAME, "--limit", "5", cwd=tmp_path)
    assert refused.returncode == 2
    assert "error:" in refused.stderr and "does not match its sha256" in refused.stderr
