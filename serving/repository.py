"""The versioned model repository: Triton's layout, atomic publishes, no half-written versions.

Layout::

    <root>/<model>/config.json              one ModelConfig for every version
    <root>/<model>/<N>/model.onnx           N = 1, 2, ... (folder names are integers)
    <root>/<model>/<N>/metadata.json        VersionMetadata, with the sha256 of every other file

A publish stages the whole version in a hidden folder inside `<root>/<model>/`
(`.staging.<pid>.<token>@<host>`), fsyncs it, writes `config.json` atomically
(temp file + `os.replace`) and then `os.rename`s the staging folder to
`<root>/<model>/<N>`, N = highest existing number + 1. The rename is the
commit: it fails if N already holds a version (a concurrent publisher won), and
the publish then retries with the next number. Readers list only integer-named
folders holding `metadata.json`, so a killed publisher's leftovers stay
invisible; the next publish removes staging folders whose owner process is gone
(same host) or that are older than `STALE_STAGING_S` (any host).

Since `config.json` serves every version, a publish whose inputs, outputs,
batch axis or labels differ from the model's current ones is refused before
anything is written; its other settings (batching, instances) replace the
current ones. Preprocessing belongs to the weights: each version records its
own in `metadata.json`, and `get` hands out config.json with it.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from headrace.errors import ConfigError, ModelNotFound, RepositoryError, UnsafeModel
from serving.model_config import (
    MODEL_NAME_PATTERN,
    ModelConfig,
    TensorSpec,
    VersionMetadata,
    check_model_name,
    validation_problems,
)

CONFIG_FILE = "config.json"
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
STALE_STAGING_S = 3600.0
"""Age after which another host's staging folder counts as abandoned (its pid cannot be checked)."""
MAX_PUBLISH_ATTEMPTS = 100
_CHUNK_BYTES = 1 << 20
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TEMP_NAME = re.compile(r"^\.(?:staging|config)\.(?P<pid>\d+)\.[0-9a-f]+@(?P<host>.+)$")
_Schema = TypeVar("_Schema", bound=BaseModel)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def _temp_name(kind: str) -> str:
    return f".{kind}.{os.getpid()}.{secrets.token_hex(4)}@{_host()}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_fsync(src: Path, dst: Path) -> str:
    """Copy `src` byte for byte (regular file or pipe), fsync `dst`; return the sha256."""
    digest = hashlib.sha256()
    with src.open("rb") as fin, dst.open("xb") as fout:
        while chunk := fin.read(_CHUNK_BYTES):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def _write_fsync(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _is_stale(entry: Path, now: float) -> bool:
    """A temp entry of a publisher that is gone: dead pid on this host, or old on another host."""
    match = _TEMP_NAME.match(entry.name)
    if match is None:
        return False  # not ours: leave it alone
    if match["host"] == _host():
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, owned by another user
        return False
    try:
        return now - entry.lstat().st_mtime > STALE_STAGING_S
    except FileNotFoundError:
        return False


def _version_number(entry: Path) -> int | None:
    """The version an entry names, or None for hidden, non-integer or non-folder entries."""
    name = entry.name
    if not name.isdecimal() or name != str(int(name)) or int(name) < 1:
        return None
    return int(name) if entry.is_dir() else None


@dataclass(frozen=True)
class ModelVersion:
    """One published, complete version of a model."""

    name: str
    version: int
    path: Path
    config: ModelConfig
    metadata: VersionMetadata

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    def verify(self) -> None:
        """Check every file against the sha256 recorded at publish; raise RepositoryError if
        not. First, UnsafeModel if the version's folder, its model's folder or a recorded file
        is a symlink: a publish writes none, and through one the loader (the server, or a job
        reading the torch weights) would read, and answer with, a model from anywhere the
        service account can read, e.g. another team's, as one of this repository's."""
        for path, what in (
            (self.path.parent, "the model's folder"),
            (self.path, "the version's folder"),
            *((self.path / f, f) for f in sorted(self.metadata.sha256)),
        ):
            if path.is_symlink():
                raise UnsafeModel(
                    f"{what} is a symlink; a version's folders and files must be the ones a "
                    "publish wrote inside the repository"
                )
        for file_name, expected in sorted(self.metadata.sha256.items()):
            file = self.path / file_name
            if not file.is_file() or sha256_file(file) != expected:
                raise RepositoryError(
                    f"model {self.name!r} version {self.version}: {file_name} is missing or "
                    "does not match its sha256 in metadata.json; publish the model again"
                )


class ModelRepository:
    """A Triton-style model repository rooted at one folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def require_folder(self) -> None:
        """ConfigError unless the repository's root is an existing folder (a server or worker
        started on a mistyped path would otherwise serve nothing and still look healthy)."""
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise ConfigError(
                f"model repository {self.root} {what}; pass --repository (or set "
                "HEADRACE_MODEL_REPOSITORY) to the folder `headrace train` publishes into"
            )

    def list_models(self) -> list[str]:
        """Sorted names of the models that have at least one complete version."""
        if not self.root.is_dir():
            return []
        names = [e.name for e in self.root.iterdir() if MODEL_NAME_PATTERN.match(e.name)]
        return sorted(n for n in names if self._complete_versions(self.root / n))

    def versions(self, name: str) -> list[int]:
        """Ascending numbers of the complete versions of `name`; ModelNotFound if there are none."""
        found = self._complete_versions(self._model_dir(name))
        if not found:
            raise ModelNotFound(f"model {name!r} not found; {self._available()}")
        return found

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """One version of a model; `None` means the latest."""
        available = self.versions(name)
        if version is None:
            version = available[-1]
        elif version not in available:
            listed = ", ".join(map(str, available))
            raise ModelNotFound(f"model {name!r} has no version {version}; versions: {listed}")
        path = self._model_dir(name) / str(version)
        metadata = self._read(name, f"{version}/{METADATA_FILE}", VersionMetadata)
        if metadata.version != version:
            raise RepositoryError(
                f"model {name!r}: {version}/{METADATA_FILE} says version {metadata.version}"
            )
        return ModelVersion(
            name, version, path, version_config(self.config(name), metadata), metadata
        )

    def latest(self, name: str) -> ModelVersion:
        """The highest complete version of a model."""
        return self.get(name)

    def config(self, name: str) -> ModelConfig:
        """The model's `config.json` (ModelNotFound if the model has no complete version)."""
        self.versions(name)
        config = self._read(name, CONFIG_FILE, ModelConfig)
        if config.name != name:
            raise RepositoryError(f"model {name!r}: {CONFIG_FILE} names model {config.name!r}")
        return config

    def publish(
        self,
        config: ModelConfig,
        model_file: Path,
        *,
        architecture: str,
        architecture_options: dict[str, float] | None = None,
        metrics: dict[str, float] | None = None,
        lineage: dict[str, str | int | float | bool | None] | None = None,
        extra_files: dict[str, Path] | None = None,
        dp_epsilon: float | None = None,
        dp_delta: float | None = None,
        watermark_id: str | None = None,
    ) -> ModelVersion:
        """Publish `model_file` (plus `extra_files`, by file name) as the model's next version."""
        name = config.name
        model_dir = self._model_dir(name)
        sources = {MODEL_FILE: Path(model_file), **_checked_extra_files(extra_files or {})}
        for src in sources.values():
            if not src.exists() or src.is_dir():
                raise RepositoryError(f"cannot publish model {name!r}: {src} is not a file")
        numbers = {**(metrics or {}), "dp_epsilon": dp_epsilon, "dp_delta": dp_delta}
        for key, value in numbers.items():
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"cannot publish model {name!r}: {key} is {value}, not finite")
        try:
            metadata = VersionMetadata(
                version=1, architecture=architecture,
                architecture_options=architecture_options or {},
                metrics=metrics or {}, lineage=lineage or {},
                dp_epsilon=dp_epsilon, dp_delta=dp_delta, watermark_id=watermark_id,
                preprocessing=config.preprocessing,
            )  # fmt: skip
        except ValidationError as exc:
            raise ConfigError(f"cannot publish model {name!r}: {validation_problems(exc)}") from exc
        self.check_interface(config)

        model_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale(model_dir)
        staging = model_dir / _temp_name("staging")
        staging.mkdir()
        try:
            for file_name, src in sources.items():
                metadata.sha256[file_name] = _copy_fsync(src, staging / file_name)
            self._write_config(model_dir, config)
            version = self._commit(model_dir, staging, metadata)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.get(name, version)

    def removed(self, name: str, version: int, files: Iterable[str] = (MODEL_FILE,)) -> str | None:
        """What of a version seen in the repository has since been deleted: METADATA_FILE
        when the version left the repository (its folder or its metadata.json is gone), else
        the first of `files` (those its metadata.json records) that is gone; None if none is.
        A publish is atomic, so a published version never lacks any of them."""
        folder = self.version_dir(name, version)
        if not (folder / METADATA_FILE).is_file():
            return METADATA_FILE
        return next((f for f in sorted(files) if not os.path.lexists(folder / f)), None)

    def version_dir(self, name: str, version: int) -> Path:
        """Where a version's files are (whether or not it exists); its config.json is in
        the parent folder."""
        return self._model_dir(name) / str(version)

    def _model_dir(self, name: str) -> Path:
        try:
            check_model_name(name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return self.root / name

    def _complete_versions(self, model_dir: Path) -> list[int]:
        if not model_dir.is_dir():
            return []
        numbers = [(n, e) for e in model_dir.iterdir() if (n := _version_number(e)) is not None]
        return sorted(n for n, e in numbers if (e / METADATA_FILE).is_file())

    def _available(self) -> str:
        names = self.list_models()
        return f"models: {', '.join(names)}" if names else "no models are published yet"

    def _read(self, name: str, relative: str, schema: type[_Schema]) -> _Schema:
        file = self._model_dir(name) / relative
        try:
            return schema.model_validate_json(file.read_bytes())
        except OSError as exc:  # the message names the file, not the repository's path
            reason = exc.strerror or type(exc).__name__
            raise RepositoryError(f"model {name!r}: cannot read {relative}: {reason}") from exc
        except ValidationError as exc:
            raise RepositoryError(
                f"model {name!r}: invalid {relative}: {validation_problems(exc)}"
            ) from exc

    def check_interface(self, config: ModelConfig) -> None:
        """Refuse (ConfigError) a config that would change the tensor interface of the model's
        published versions; `publish` calls it, jobs may call it early to fail before training.

        All versions share one config.json, so a publish rewrites it for every version: inputs,
        outputs, the presence of a batch axis and labels must stay as they are. Other settings
        (batching, instances, ...) are updated by the new config, as in Triton; preprocessing
        too, but each version keeps its own (see `version_config`).
        An unreadable config.json is left to be replaced, as before.
        """
        name = config.name
        if not self._complete_versions(self._model_dir(name)):
            return
        try:
            current = self.config(name)
        except RepositoryError:
            return
        changed = [
            field
            for field, old, new in (
                ("inputs", current.inputs, config.inputs),
                ("outputs", current.outputs, config.outputs),
                ("batch axis", current.max_batch_size > 0, config.max_batch_size > 0),
                ("labels", current.labels, config.labels),
            )
            if old != new
        ]
        if changed:
            raise ConfigError(
                f"cannot publish model {name!r}: its {' and '.join(changed)} differ from those of "
                f"its published versions ({_interface(current)}; this one: "
                f"{_interface(config)}), and every version shares the model's {CONFIG_FILE}; "
                "publish under another name (--name)"
            )

    def _write_config(self, model_dir: Path, config: ModelConfig) -> None:
        tmp = model_dir / _temp_name("config")
        try:
            _write_fsync(tmp, config.model_dump_json(indent=2) + "\n")
            os.replace(tmp, model_dir / CONFIG_FILE)
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, model_dir: Path, staging: Path, metadata: VersionMetadata) -> int:
        """Rename `staging` to the next free version number; return that number."""
        existing = [n for e in model_dir.iterdir() if (n := _version_number(e)) is not None]
        version = max(existing, default=0) + 1
        for _ in range(MAX_PUBLISH_ATTEMPTS):
            metadata.version = version
            _write_fsync(staging / METADATA_FILE, metadata.model_dump_json(indent=2) + "\n")
            _fsync_dir(staging)
            try:
                os.rename(staging, model_dir / str(version))
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise RepositoryError(
                        f"cannot publish model {model_dir.name!r}: {exc}"
                    ) from exc
                version += 1  # another publisher took this number
                continue
            _fsync_dir(model_dir)
            return version
        raise RepositoryError(
            f"cannot publish model {model_dir.name!r}: no free version number after "
            f"{MAX_PUBLISH_ATTEMPTS} attempts"
        )

    def _remove_stale(self, model_dir: Path) -> None:
        now = time.time()
        for entry in model_dir.iterdir():
            if entry.name.startswith(".") and _is_stale(entry, now):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def version_config(config: ModelConfig, metadata: VersionMetadata) -> ModelConfig:
    """The model's config.json as one version runs with it: with the preprocessing the
    version was trained with (recorded in its metadata), which a later publish may have
    replaced in config.json."""
    own = metadata.preprocessing
    if own is None or own == config.preprocessing:
        return config
    return config.model_copy(update={"preprocessing": own})


def _interface(config: ModelConfig) -> str:
    """A model's tensors in one line, e.g. `input FP32 [1, 28, 28] -> logits FP32 [10]`."""

    def tensors(specs: list[TensorSpec]) -> str:
        return ", ".join(f"{t.name} {t.datatype} {t.dims}" for t in specs)

    batch = (
        f"batch axis up to {config.max_batch_size}" if config.max_batch_size else "no batch axis"
    )
    return (
        f"{tensors(config.inputs)} -> {tensors(config.outputs)}, {batch}, "
        f"{len(config.labels)} labels"
    )


def _checked_extra_files(extra_files: Mapping[str, Path]) -> dict[str, Path]:
    checked = {}
    for file_name, src in extra_files.items():
        if not _FILE_NAME.match(file_name) or file_name in {MODEL_FILE, METADATA_FILE}:
            raise ConfigError(
                f"invalid extra file name {file_name!r}: use a plain file name of letters, digits, "
                f"'_', '-' or '.', other than {MODEL_FILE} and {METADATA_FILE}"
            )
        checked[file_name] = Path(src)
    return checked
