"""protos/: the generated code is fresh, and the messages and service match Triton's on the wire.

Triton's definitions come from the descriptors tritonclient ships. They cannot be
imported beside ours: both declare `inference.*` symbols and protobuf's default
descriptor pool refuses a symbol declared by two files. So a subprocess reads
tritonclient's serialized file descriptors and this process loads them into a
private pool; its message classes are tritonclient's messages (same descriptors).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message

from protos import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_FILES = ("protos/model_config.proto", "protos/grpc_service.proto")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
OUR_FILES: tuple[FileDescriptor, ...] = (model_config_pb2.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR)
SERVICE = "inference.GRPCInferenceService"
RPCS = {
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    "ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
    "RepositoryModelLoad", "RepositoryModelUnload",
}  # fmt: skip

_READ_TRITON_DESCRIPTORS = """
import base64, json
from tritonclient.grpc import model_config_pb2, service_pb2
files = [model_config_pb2.DESCRIPTOR, service_pb2.DESCRIPTOR]
print(json.dumps([base64.b64encode(f.serialized_pb).decode() for f in files]))
"""


def protoc(root: Path) -> None:
    """Run the `make protos` command with `root` as the include and output folder."""
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{root}", f"--python_out={root}",
         f"--pyi_out={root}", f"--grpc_python_out={root}", *PROTO_FILES],
        cwd=root, check=True, capture_output=True, text=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def triton() -> descriptor_pool.DescriptorPool:
    """A private descriptor pool with tritonclient's model_config.proto and grpc_service.proto."""
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed (pip install -e '.[dev]')")
    out = subprocess.run(
        [sys.executable, "-c", _READ_TRITON_DESCRIPTORS], check=True, capture_output=True, text=True
    ).stdout
    pool = descriptor_pool.DescriptorPool()
    for serialized in json.loads(out):
        pool.AddSerializedFile(base64.b64decode(serialized))
    return pool


def all_messages(file: FileDescriptor) -> Iterator[Descriptor]:
    """Every message of a file, nested ones (map entries too) included."""
    todo = list(file.message_types_by_name.values())
    while todo:
        message = todo.pop()
        yield message
        todo.extend(message.nested_types)


def all_enums(file: FileDescriptor) -> Iterator[EnumDescriptor]:
    yield from file.enum_types_by_name.values()
    for message in all_messages(file):
        yield from message.enum_types


def field_signature(field: FieldDescriptor) -> tuple[Any, ...]:
    """What must agree for two fields to be the same field, on the wire and in the API."""
    return (
        field.number,
        field.type,
        field.is_repeated,
        field.is_required,
        field.has_presence,
        field.message_type.full_name if field.message_type else None,
        field.enum_type.full_name if field.enum_type else None,
        field.containing_oneof.name if field.containing_oneof else None,
    )


# -- generated code ------------------------------------------------------------------------


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    (tmp_path / "protos").mkdir()
    for proto in PROTO_FILES:
        shutil.copy(REPO_ROOT / proto, tmp_path / proto)
    protoc(tmp_path)
    generated = sorted(p.name for p in (tmp_path / "protos").iterdir() if p.suffix != ".proto")
    assert generated == sorted(
        Path(proto).stem + suffix for proto in PROTO_FILES for suffix in GENERATED_SUFFIXES
    )
    stale = [
        name
        for name in generated
        if (tmp_path / "protos" / name).read_bytes() != (REPO_ROOT / "protos" / name).read_bytes()
    ]
    assert not stale, f"{stale} differ from their .proto files: run `make protos`"


def test_generated_code_imports_model_config_from_protos_package() -> None:
    assert [f.name for f in grpc_service_pb2.DESCRIPTOR.dependencies] == [
        "protos/model_config.proto"
    ]
    assert grpc_service_pb2.DESCRIPTOR.package == model_config_pb2.DESCRIPTOR.package == "inference"


# -- wire compatibility --------------------------------------------------------------------


@pytest.mark.parametrize("file", OUR_FILES, ids=lambda f: f.name)
def test_every_field_matches_triton(triton: descriptor_pool.DescriptorPool, file: Any) -> None:
    for ours in all_messages(file):
        theirs = triton.FindMessageTypeByName(ours.full_name)
        assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry, ours.full_name
        for field in ours.fields:
            assert field.name in theirs.fields_by_name, f"{ours.full_name}.{field.name}"
            assert field_signature(field) == field_signature(theirs.fields_by_name[field.name]), (
                f"{ours.full_name}.{field.name}"
            )
    for ours_enum in all_enums(file):
        theirs_enum = triton.FindEnumTypeByName(ours_enum.full_name)
        for value in ours_enum.values:
            assert theirs_enum.values_by_name[value.name].number == value.number, value.full_name


def test_grpc_service_defines_every_message_triton_has_for_our_rpcs(
    triton: descriptor_pool.DescriptorPool,
) -> None:
    ours = {m.full_name for m in all_messages(grpc_service_pb2.DESCRIPTOR)}
    theirs_service = triton.FindServiceByName(SERVICE)
    for method in theirs_service.methods:
        if method.name in RPCS:
            for message in (method.input_type, method.output_type):
                theirs = {message.full_name} | {
                    f.message_type.full_name
                    for f in message.fields
                    if f.message_type and f.message_type.file.name == "grpc_service.proto"
                }
                assert theirs <= ours, method.name


def scalar(field: FieldDescriptor, n: int) -> Any:
    """A non-default value for a scalar field, derived from `n`."""
    t = FieldDescriptor
    by_type: dict[int, Any] = {
        t.TYPE_BOOL: True,
        t.TYPE_STRING: f"{field.name}-{n}",
        t.TYPE_BYTES: bytes([0, 255, n % 256]),
        t.TYPE_FLOAT: n + 0.5,
        t.TYPE_DOUBLE: n + 0.25,
        t.TYPE_INT32: -n,
        t.TYPE_INT64: -(2**40) - n,
        t.TYPE_UINT32: 2**31 + n,
        t.TYPE_UINT64: 2**63 + n,
    }
    if field.type == t.TYPE_ENUM:
        return field.enum_type.values[-1].number
    return by_type[field.type]


def populate(msg: Message, guide: Descriptor, depth: int = 0) -> Message:
    """Set every field `guide` (our or Triton's descriptor of the message) defines; a oneof gets
    its first member; repeated fields get two values, maps one entry."""
    assert depth < 8, "populate recursed too deep"
    for guide_field in guide.fields:
        field = msg.DESCRIPTOR.fields_by_name[guide_field.name]
        oneof = field.containing_oneof
        if oneof is not None and msg.WhichOneof(oneof.name) is not None:
            continue
        target = getattr(msg, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            if value.message_type is None:
                target[scalar(key, field.number)] = scalar(value, field.number)
            else:
                guide_value = guide_field.message_type.fields_by_name["value"].message_type
                populate(target[scalar(key, field.number)], guide_value, depth + 1)
        elif entry is not None and field.is_repeated:
            for _ in range(2):
                populate(target.add(), guide_field.message_type, depth + 1)
        elif entry is not None:
            target.SetInParent()
            populate(target, guide_field.message_type, depth + 1)
        elif field.is_repeated:
            target.extend(
                [scalar(guide_field, field.number), scalar(guide_field, field.number + 1)]
            )
        else:
            setattr(msg, field.name, scalar(guide_field, field.number))
    return msg


TOP_LEVEL = [
    m for f in OUR_FILES for m in f.message_types_by_name.values()
]  # every message a client can send or receive


@pytest.mark.parametrize("ours", TOP_LEVEL, ids=lambda m: m.name)
def test_round_trip_with_tritons_classes(
    triton: descriptor_pool.DescriptorPool, ours: Descriptor
) -> None:
    ours_class = message_factory.GetMessageClass(ours)
    theirs_class = message_factory.GetMessageClass(triton.FindMessageTypeByName(ours.full_name))

    # Filled with the fields we define: the same bytes, and each side parses the other's.
    our_msg = populate(ours_class(), ours)
    their_msg = populate(theirs_class(), ours)
    our_bytes = our_msg.SerializeToString(deterministic=True)
    their_bytes = their_msg.SerializeToString(deterministic=True)
    assert our_bytes == their_bytes
    assert ours_class.FromString(their_bytes) == our_msg
    assert theirs_class.FromString(our_bytes) == their_msg

    # Filled with every field Triton has: what we do not define passes through us unchanged.
    full = populate(theirs_class(), theirs_class.DESCRIPTOR)
    through_us = ours_class.FromString(full.SerializeToString())
    assert theirs_class.FromString(through_us.SerializeToString()) == full


def test_populated_model_infer_request_and_config_are_really_populated() -> None:
    request = populate(
        grpc_service_pb2.ModelInferRequest(), grpc_service_pb2.ModelInferRequest.DESCRIPTOR
    )
    assert len(request.inputs) == 2 and request.inputs[0].contents.fp32_contents
    assert request.raw_input_contents and request.parameters and request.outputs[0].parameters
    config = populate(
        grpc_service_pb2.ModelConfigResponse(), grpc_service_pb2.ModelConfigResponse.DESCRIPTOR
    ).config
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.default_queue_policy.max_queue_size
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.input[0].data_type == model_config_pb2.TYPE_BF16
    assert config.instance_group[1].kind == model_config_pb2.ModelInstanceGroup.KIND_MODEL
    assert config.parameters[next(iter(config.parameters))].string_value


# -- the service ---------------------------------------------------------------------------


def test_service_methods_match_triton(triton: descriptor_pool.DescriptorPool) -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.FindServiceByName(SERVICE)
    assert ours.full_name == SERVICE
    assert {m.name for m in ours.methods} == RPCS
    for method in ours.methods:
        twin = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            twin.input_type.full_name,
            twin.output_type.full_name,
        ), method.name
        assert (method.client_streaming, method.server_streaming) == (
            twin.client_streaming,
            twin.server_streaming,
        ), method.name


class RecordingChannel:
    """Stands in for a grpc.Channel and records which kind of call each path was bound as."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def __getattr__(self, kind: str) -> Any:
        def bind(path: str, **_: Any) -> None:
            self.paths[path] = kind

        return bind


def test_generated_stub_uses_tritons_paths_and_call_kinds(
    triton: descriptor_pool.DescriptorPool,
) -> None:
    channel = RecordingChannel()
    grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    kinds = {(False, False): "unary_unary", (True, True): "stream_stream"}
    theirs = triton.FindServiceByName(SERVICE)
    expected = {
        f"/{SERVICE}/{m.name}": kinds[m.client_streaming, m.server_streaming]
        for m in theirs.methods
        if m.name in RPCS
    }
    assert channel.paths == expected
