"""The protocol's message classes, built from the compiled .proto in a pool of their own.

Not protoc's generated module: that registers `inference.*` in protobuf's process-wide pool,
where Triton's client (and any other program embedding the server beside a client of the
protocol) registers the same names, and the second to load fails. A private pool holds
them apart; reflection is given the same pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

COMPILED = Path(__file__).with_name("grpc_predict_v2.binpb")
PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"


def build_pool() -> Any:
    """The protocol's file, and the health and reflection services' so that reflection can
    describe every service the server offers."""
    pool: Any = descriptor_pool.DescriptorPool()  # the stubs leave its methods untyped
    for module in (health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    for file in descriptor_pb2.FileDescriptorSet.FromString(COMPILED.read_bytes()).file:
        pool.Add(file)
    return pool


POOL = build_pool()
SERVICE_DESCRIPTOR = POOL.FindServiceByName(SERVICE)


def message(name: str) -> Any:
    """The class of `inference.<name>` (nested types as Outer.Inner)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveResponse = message("ServerLiveResponse")
ServerReadyResponse = message("ServerReadyResponse")
ModelReadyResponse = message("ModelReadyResponse")
ServerMetadataResponse = message("ServerMetadataResponse")
ModelMetadataResponse = message("ModelMetadataResponse")
ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")
RepositoryIndexResponse = message("RepositoryIndexResponse")
RepositoryModelLoadResponse = message("RepositoryModelLoadResponse")
