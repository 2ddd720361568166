"""Safe loading of a model version's files: nothing is read from outside the version folder.

An ONNX file may keep tensor data in other files ("external data"), named by a
`location` string inside the file. A crafted model could point that at
`../../etc/shadow`, an absolute path, or a symlink planted in the folder, and
make the server read (and answer with functions of) any file it can open.
`check_version_files` runs before any session is built (the model manager
calls it right after the sha256 check; `OnnxModel` calls `check_external_data`
on any file it opens) and refuses a version unless every external-data
location is a plain relative path to a regular file inside the folder (no
`..`, no absolute path, no backslash, no symlink on the way), and that file is
one of those whose sha256 was recorded at publish, so the integrity check
covers every byte the runtime will read. The version's own recorded files must
not be symlinks either.

Only the ONNX protobuf is parsed here (`load_external_data=False`); nothing is
executed and nothing is written.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterator
from pathlib import Path, PurePosixPath

import onnx
from onnx import AttributeProto, GraphProto, TensorProto

from headrace.errors import ModelLoadError, UnsafeModel

_SHOWN_CHARS = 80  # longest location echoed in a message (it comes from an untrusted file)


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")


def _attribute_tensors(attribute: AttributeProto) -> Iterator[TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
    for tensor in [*sparse, *attribute.sparse_tensors]:
        yield tensor.values
        yield tensor.indices
    if attribute.HasField("g"):
        yield from graph_tensors(attribute.g)
    for graph in attribute.graphs:
        yield from graph_tensors(graph)


def graph_tensors(graph: GraphProto) -> Iterator[TensorProto]:
    """Every tensor of a graph: initializers, sparse ones, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            yield from _attribute_tensors(attribute)


def model_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every tensor anywhere in a model, including functions (their nodes' attributes and
    their attributes' default values) and training-info graphs."""
    yield from graph_tensors(model.graph)
    for function in model.functions:
        for attribute in function.attribute_proto:  # defaults, inlined by the runtime
            yield from _attribute_tensors(attribute)
        for node in function.node:
            for attribute in node.attribute:
                yield from _attribute_tensors(attribute)
    for info in model.training_info:
        yield from graph_tensors(info.initialization)
        yield from graph_tensors(info.algorithm)


def external_locations(model_file: Path) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor whose data lives in another file."""
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a file that is not ONNX
        raise ModelLoadError(
            f"{model_file.name!r} cannot be parsed as ONNX ({type(exc).__name__}); "
            "export the model again"
        ) from None
    found = []
    for tensor in model_tensors(model):
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if tensor.data_location == TensorProto.EXTERNAL or entries:
            found.append((tensor.name, entries.get("location", "")))
    return found


def _location_problem(location: str) -> str | None:
    """Why a location string is not a plain relative path inside the folder, or None."""
    if not location:
        return "has no location"
    if "\x00" in location or "\\" in location:
        return "contains a NUL or backslash"
    path = PurePosixPath(location)
    if not path.parts:
        return "names no file"
    if path.is_absolute() or (len(location) > 1 and location[1] == ":"):
        return "is an absolute path"
    if any(part == ".." for part in path.parts):
        return "has a '..' component"
    return None


def _file_problem(folder: Path, location: str) -> str | None:
    """Why `folder / location` is not a regular file reached without symlinks, or None."""
    current = folder
    for part in PurePosixPath(location).parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except OSError:
            return "does not exist in the version folder"
        if stat.S_ISLNK(mode):
            return "is (or passes through) a symlink"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    real, root = Path(os.path.realpath(current)), Path(os.path.realpath(folder))
    if not real.is_relative_to(root):
        return "resolves outside the version folder"
    return None


def check_external_data(model_file: Path, recorded: Collection[str] | None = None) -> None:
    """Refuse (UnsafeModel) external data that lies outside `model_file`'s folder.

    With `recorded` (the file names whose sha256 was recorded at publish), each external
    file must also be one of them. A file that is not ONNX raises plain ModelLoadError.
    """
    folder = model_file.parent
    for tensor, location in external_locations(model_file):
        why = _location_problem(location) or _file_problem(folder, location)
        unrecorded = recorded is not None and PurePosixPath(location).as_posix() not in recorded
        if why is None and unrecorded:
            why = "is not one of the files whose sha256 was recorded at publish"
        if why is not None:
            raise UnsafeModel(
                f"{model_file.name}: tensor {_shown(tensor)} keeps its data in "
                f"{_shown(location)}, which {why}; external data must be a file published "
                "beside the model (repository publish extra_files), or re-export with the "
                "weights inside the file"
            )


def check_version_files(folder: Path, model_file: str, recorded: Collection[str]) -> None:
    """Refuse (UnsafeModel) a version whose files could make the loader read outside `folder`.

    `model_file` is the ONNX file's name in `folder`; `recorded` the names whose sha256 was
    recorded at publish (checked separately, before this). None of them may be a symlink,
    and external data must be one of them. A file that is not ONNX raises ModelLoadError.
    """
    for name in sorted({model_file, *recorded}):
        if (folder / name).is_symlink():
            raise UnsafeModel(f"{name} is a symlink; a version's files must be regular files")
    check_external_data(folder / model_file, recorded)
