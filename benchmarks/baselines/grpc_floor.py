"""BASELINE for benchmarks/bench.py, not part of the product: the gRPC floor.

grpc.aio on uvicorn's event loop, as the server runs it, with ModelInfer answering a constant,
pre-built response: no auth, no validation, no model. Its throughput and latency are what
grpcio's Python server costs per call on this machine; server_grpc/grpc_floor shows how much
of that the server adds. ModelMetadata answers too, since the load generator asks it for the
input's name. The HTTP side only says it is ready.

    FRAUD_GRPC_PORT=8001 uvicorn --factory benchmarks.baselines.grpc_floor:create_app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.grpcapi.messages import (
    SERVICE,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataResponse,
    message,
)

INPUT = "features"


def constant_answers() -> tuple[Any, Any]:
    infer = ModelInferResponse(model_name="floor", model_version="1")
    infer.outputs.add(name="fraud_probability", datatype="FP32", shape=[1, 1])
    infer.raw_output_contents.append(b"\x00\x00\x00\x3f")  # 0.5
    metadata = ModelMetadataResponse(name="floor", versions=["1"], platform="floor")
    metadata.inputs.add(name=INPUT, datatype="FP32", shape=[-1, -1])
    return infer, metadata


def create_app() -> Starlette:
    infer_answer, metadata_answer = constant_answers()

    async def infer(request: Any, context: Any) -> Any:
        return infer_answer

    async def metadata(request: Any, context: Any) -> Any:
        return metadata_answer

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            infer, ModelInferRequest.FromString, ModelInferResponse.SerializeToString
        ),
        "ModelMetadata": grpc.unary_unary_rpc_method_handler(
            metadata,
            message("ModelMetadataRequest").FromString,
            ModelMetadataResponse.SerializeToString,
        ),
    }

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_registered_method_handlers(SERVICE, handlers)
        server.add_insecure_port(f"127.0.0.1:{os.environ['FRAUD_GRPC_PORT']}")
        await server.start()
        yield
        await server.stop(1.0)

    async def ready(request: Request) -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return Starlette(routes=[Route("/v1/health/ready", ready, methods=["GET"])], lifespan=lifespan)
