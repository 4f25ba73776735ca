"""server/grpcapi/grpc_predict_v2.proto: its compiled descriptor set is what `make proto` makes
of it, and its wire interface is the one the official Triton client speaks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2

from tests.conftest import ROOT

GRPCAPI = ROOT / "server" / "grpcapi"
COMPILED = GRPCAPI / "grpc_predict_v2.binpb"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PACKAGE = "inference"
SERVICE = "GRPCInferenceService"


def ours() -> Any:
    [file] = descriptor_pb2.FileDescriptorSet.FromString(COMPILED.read_bytes()).file
    return file


def theirs() -> Any:
    return descriptor_pb2.FileDescriptorProto.FromString(service_pb2.DESCRIPTOR.serialized_pb)


def messages(file: Any) -> dict[str, Any]:
    """Every message of a file by full name, nested ones (map entries included) too."""
    found: dict[str, Any] = {}

    def walk(prefix: str, types: Any) -> None:
        for message in types:
            name = f"{prefix}.{message.name}"
            found[name] = message
            walk(name, message.nested_type)

    walk(f".{file.package}", file.message_type)
    return found


def fields(message: Any) -> dict[str, tuple[Any, ...]]:
    """name -> (number, type, label, type name, oneof, packed) of each field."""
    oneofs = [oneof.name for oneof in message.oneof_decl]
    return {
        field.name: (
            field.number,
            field.type,
            field.label,
            field.type_name,
            oneofs[field.oneof_index] if field.HasField("oneof_index") else None,
            field.options.packed if field.options.HasField("packed") else None,
        )
        for field in message.field
    }


def test_the_descriptor_set_is_what_make_proto_makes(tmp_path: Path) -> None:
    python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
    out = tmp_path / "grpc_predict_v2.binpb"
    # The Makefile's `proto` target, with the output moved aside.
    subprocess.run(
        [
            str(python),
            "-m",
            "grpc_tools.protoc",
            "-Iserver/grpcapi",
            f"--descriptor_set_out={out}",
            "server/grpcapi/grpc_predict_v2.proto",
        ],
        cwd=ROOT,
        check=True,
    )
    assert out.read_bytes() == COMPILED.read_bytes(), "run `make proto` and commit the result"


def test_the_makefile_target_is_the_command_above() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nproto:", 1)[1].split("\n\n", 1)[0]
    assert "-m grpc_tools.protoc -Iserver/grpcapi" in recipe
    assert "--descriptor_set_out=server/grpcapi/grpc_predict_v2.binpb" in recipe
    assert recipe.rstrip().endswith("server/grpcapi/grpc_predict_v2.proto")


def test_the_file_is_the_protocols_package_in_proto3() -> None:
    file = ours()
    assert (file.package, file.syntax) == (PACKAGE, "proto3") == (theirs().package, "proto3")
    assert list(file.dependency) == []  # nothing but its own messages


MESSAGES = sorted(messages(ours()))


@pytest.mark.parametrize("name", MESSAGES)
def test_each_message_is_the_clients_field_for_field(name: str) -> None:
    mine, official = messages(ours())[name], messages(theirs()).get(name)
    assert official is not None, f"{name} is not a message of the protocol"
    mine_fields, official_fields = fields(mine), fields(official)
    for field, properties in mine_fields.items():
        assert field in official_fields, f"{name}.{field} is not the protocol's"
        assert properties == official_fields[field], f"{name}.{field}"
    # None of the client's fields would be dropped unread.
    assert set(official_fields) <= set(mine_fields), name
    assert mine.options.map_entry == official.options.map_entry


def test_every_message_the_client_sends_or_reads_for_our_methods_is_declared() -> None:
    declared = messages(ours())
    for method in ours().service[0].method:
        for type_name in (method.input_type, method.output_type):
            assert type_name in declared
    referenced = {
        field.type_name
        for message in declared.values()
        for field in message.field
        if field.type_name
    }
    assert referenced <= set(declared)
    assert len(MESSAGES) >= 20  # the walk found the nested types too


def test_each_method_is_the_clients_with_the_same_types() -> None:
    [service] = ours().service
    assert service.name == SERVICE
    [official] = [s for s in theirs().service if s.name == SERVICE]
    official_methods = {method.name: method for method in official.method}
    names = [method.name for method in service.method]
    assert names == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "RepositoryIndex",
        "RepositoryModelLoad",
    ]
    for method in service.method:
        assert method.name in official_methods, method.name
        other = official_methods[method.name]
        assert (
            method.input_type,
            method.output_type,
            method.client_streaming,
            method.server_streaming,
        ) == (
            other.input_type,
            other.output_type,
            other.client_streaming,
            other.server_streaming,
        ), method.name
