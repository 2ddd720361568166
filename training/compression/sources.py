"""Which published versions a compression job starts from and learns from.

- The source: a version of the named model, by default its latest
  *uncompressed* one (compressed versions carry `compressed_from` in their
  lineage and have no torch weights to start from).
- The teacher of distillation: another published model with the same inputs
  and classes; if it was trained with other normalisation statistics it is
  wrapped so that it sees inputs normalised its own way.
"""

from __future__ import annotations

import torch
from torch import nn

from headrace.errors import ConfigError, ModelNotFound
from serving.model_config import PreprocessingSpec
from serving.repository import ModelRepository, ModelVersion
from training.compression.config import parse_model_ref

COMPRESSED_FROM = "compressed_from"


def is_compressed(version: ModelVersion) -> bool:
    """True for a version published by a compression job."""
    return COMPRESSED_FROM in version.metadata.lineage


def version_ref(version: ModelVersion) -> str:
    """`name:version`."""
    return f"{version.name}:{version.version}"


def uncompressed_version(
    repository: ModelRepository, name: str, version: int | None, teacher: bool = False
) -> ModelVersion:
    """`name`'s given version, or its latest uncompressed one; refuses compressed versions
    (a `teacher`'s refusal names the --distill-from flag, a source's --model)."""
    if version is not None:
        found = repository.get(name, version)
        if is_compressed(found):
            origin = str(found.metadata.lineage[COMPRESSED_FROM])
            source_name, _, source_version = origin.rpartition(":")
            instead = (
                f"distill from its source instead (--distill-from {origin})"
                if teacher
                else f"compress its source instead (--model {source_name} "
                f"--from-version {source_version})"
            )
            raise ConfigError(
                f"model {name!r} version {version} is already compressed (from {origin}) and has "
                f"no torch weights; {instead}"
            )
        return found
    for number in reversed(repository.versions(name)):
        found = repository.get(name, number)
        if not is_compressed(found):
            return found
    raise ModelNotFound(
        f"model {name!r} has only compressed versions; train it (`headrace train`) or name "
        "the model they were compressed from"
    )


def passed_over(repository: ModelRepository, chosen: ModelVersion) -> str | None:
    """Why the version folders of `chosen`'s model above it were not taken as the default
    (latest uncompressed) version, in one clause; None if there are none. A numbered folder
    without metadata.json is no publish (a publish renames in a folder holding it): a copy by
    hand, or one cut short; the repository, and so serving, leaves it out."""
    folder = repository.version_dir(chosen.name, chosen.version).parent
    complete = set(repository.versions(chosen.name))
    incomplete, compressed = [], []
    for entry in folder.iterdir():
        name = entry.name
        if not (name.isdecimal() and name == str(int(name)) and entry.is_dir()):
            continue
        if int(name) <= chosen.version:
            continue
        if int(name) not in complete:
            incomplete.append(int(name))
        elif is_compressed(repository.get(chosen.name, int(name))):
            compressed.append(int(name))
    reasons = []
    if incomplete:
        reasons.append(
            f"{_numbers(incomplete)} incomplete (no metadata.json: copied by hand or cut "
            "short, and not served either)"
        )
    if compressed:
        reasons.append(f"{_numbers(compressed)} compressed (no torch weights)")
    return " and ".join(reasons) if reasons else None


def _numbers(versions: list[int]) -> str:
    """'version 3 is' / 'versions 3, 4 are'."""
    if len(versions) == 1:
        return f"version {versions[0]} is"
    return f"versions {', '.join(map(str, sorted(versions)))} are"


class Renormalized(nn.Module):
    """A teacher fed inputs normalised for the student: undoes the student's normalisation and
    applies the teacher's own (`(pixels * scale - mean) / std` per channel on both sides)."""

    a: torch.Tensor
    b: torch.Tensor

    def __init__(self, teacher: nn.Module, student: PreprocessingSpec, own: PreprocessingSpec):
        super().__init__()
        self.teacher = teacher

        def view(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)

        # student input x -> raw pixels p = (x * std_s + mean_s) / scale_s
        # teacher input   = (p * scale_t - mean_t) / std_t = x * a + b
        ratio = own.scale / student.scale
        self.register_buffer("a", view(student.std) * ratio / view(own.std))
        self.register_buffer("b", (view(student.mean) * ratio - view(own.mean)) / view(own.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x * self.a + self.b)


def _spec(version: ModelVersion) -> PreprocessingSpec:
    spec = version.config.preprocessing
    if spec is not None:
        return spec
    channels = version.config.inputs[0].dims[0]
    return PreprocessingSpec(scale=1.0, mean=[0.0] * channels, std=[1.0] * channels)


def load_teacher(
    repository: ModelRepository, ref: str, student: ModelVersion
) -> tuple[nn.Module, ModelVersion]:
    """The teacher named by `ref` (NAME or NAME:VERSION), frozen, in eval mode, taking the
    student's inputs; ConfigError if its inputs or classes differ from the student's."""
    from training.published import load_published_model

    try:
        name, number = parse_model_ref(ref)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        version = uncompressed_version(repository, name, number, teacher=True)
    except ModelNotFound as exc:
        raise ConfigError(f"teacher {ref!r} not found: {exc.message}") from None
    s_cfg, t_cfg = student.config, version.config
    problems = []
    if list(t_cfg.inputs[0].dims) != list(s_cfg.inputs[0].dims):
        problems.append(f"inputs {t_cfg.inputs[0].dims} vs {s_cfg.inputs[0].dims}")
    if t_cfg.outputs[0].dims[-1] != s_cfg.outputs[0].dims[-1]:
        problems.append(f"{t_cfg.outputs[0].dims[-1]} vs {s_cfg.outputs[0].dims[-1]} classes")
    elif t_cfg.labels and s_cfg.labels and t_cfg.labels != s_cfg.labels:
        problems.append("different class labels")
    if problems:
        raise ConfigError(
            f"teacher {version_ref(version)} does not fit student {version_ref(student)}: "
            f"{'; '.join(problems)}; pick a teacher trained on the same dataset"
        )
    teacher: nn.Module = load_published_model(version)
    own, seen = _spec(version), _spec(student)
    if own != seen:
        teacher = Renormalized(teacher, seen, own)
    teacher.eval().requires_grad_(False)
    return teacher, version
