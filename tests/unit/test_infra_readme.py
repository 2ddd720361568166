"""The README's "Run on real Kafka" steps cannot run here (no Docker engine), so they are checked
against what they rely on: every `headrace` line parses with the CLI, every `make` target
exists, the bootstrap is the one the compose broker advertises to the host, and the model
they query is the one the stack trains."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from infra_checks import COMPOSE_FILE, REPO_ROOT, cli_problems, compose_model

from training.job_spec import parse_job_spec

README = REPO_ROOT / "README.md"


def section_commands(title: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```console\n(.*?)```", text[start:end], flags=re.S)
    return [line.split("#")[0].strip() for b in blocks for line in b.splitlines() if line.strip()]


def test_real_kafka_steps_use_what_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files the earlier steps write (manifest, inputs) exist here
    commands = section_commands("Run on real Kafka")
    assert commands[0].startswith("git clone")
    targets = set(re.findall(r"^([\w-]+):", (REPO_ROOT / "Makefile").read_text(), flags=re.M))
    model = compose_model(COMPOSE_FILE)
    services = model["services"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    trained = " ".join(services["model-init"]["command"])
    seen = set()
    for command in commands:
        argv = shlex.split(command)
        seen.add(argv[0])
        if argv[0] == "make":
            assert set(argv[1:]) <= targets, command
        elif argv[0] == "headrace":
            for flag in ("--manifest", "--input"):
                if flag in argv:
                    Path(argv[argv.index(flag) + 1]).touch()
            if argv[1:3] == ["train", "submit"]:  # a spec from the clone, for the stack's agent
                assert "training-agent" in services, "no agent in the stack to run the job"
                spec = Path(argv[3])
                parse_job_spec((REPO_ROOT / spec).read_text(), source=str(spec))
                spec.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO_ROOT / spec, spec)
            assert cli_problems(argv[1:]) == [], command
            if "--model" in argv:
                name = argv[argv.index("--model") + 1]
                assert f"headrace models show {name} " in trained, (name, trained)
        elif argv[0] == "export":
            key, _, value = argv[1].partition("=")
            assert key == "HEADRACE_KAFKA_BOOTSTRAP"
            assert f"PLAINTEXT_HOST://{value}" in advertised, advertised
    assert {"make", "headrace", "export"} <= seen
    produced = [c for c in commands if c.startswith("headrace produce")]
    assert produced and any(c.startswith("headrace results") for c in commands)
    assert any(c.startswith("headrace train submit") for c in commands)


def test_kubernetes_steps_name_existing_files() -> None:
    for command in section_commands("Run on Kubernetes"):
        argv = shlex.split(command)
        assert argv[:3] == ["kubectl", "apply", "-f"], command
        assert (REPO_ROOT / argv[3]).exists(), command
