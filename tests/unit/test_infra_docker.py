"""infra/Dockerfile, checked without a Docker engine: BuildKit's parser and what a build needs
from this repository (sources present and not ignored, every package, torch's CPU pin, a
non-root user); broken copies must fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from infra_checks import DOCKERFILE, REPO_ROOT, dockerfile_problems


def test_dockerfile_builds_from_this_repository() -> None:
    assert dockerfile_problems(DOCKERFILE) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("COPY streams ./streams", "COPY stream ./streams", "COPY stream: no such path"),
        ("COPY security ./security\n", "", "package security/ is not copied"),
        ("torch==2.13.0", "torch==2.12.0", "pyproject's pin"),
        ("download.pytorch.org/whl/cpu", "download.pytorch.org/whl/cu128", "CPU index"),
        ("USER 10001:10001", "USER root", "runs as root"),
        ('ENTRYPOINT ["headrace"]', 'ENTRYPOINT ["headrace-cli"]', "ENTRYPOINT"),
        ("RUN python -m venv /opt/venv", "RUNN python -m venv /opt/venv", "unknown instruction"),
    ],
)
def test_dockerfile_check_fails_on_a_broken_copy(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(old, new))
    problems = dockerfile_problems(broken)
    assert any(expected in p for p in problems), problems


def test_dockerignore_must_let_the_sources_in(tmp_path: Path) -> None:
    ignore = tmp_path / ".dockerignore"
    ignore.write_text((REPO_ROOT / ".dockerignore").read_text().replace("!serving/\n", ""))
    problems = dockerfile_problems(DOCKERFILE, ignore_file=ignore)
    assert any("serving is .dockerignored" in p for p in problems), problems
