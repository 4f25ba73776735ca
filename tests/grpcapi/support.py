"""What the gRPC test modules share: the shipped model as a repository of two versions,
servers serving gRPC beside HTTP (and the settings of the one a module shares), the keys they
accept, request builders, and readers of refusals, the health service and reflection."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, TEST_API_KEY, LiveServer, free_port, start_server
from tests.model_edits import make_version

SHIPPED = ROOT / "models" / "creditcard" / "4"
MODEL = "creditcard"
N_FEATURES = 29
MAX_ROWS = 50  # FRAUD_MAX_BATCH_ITEMS of the servers here
SERVICE = "inference.GRPCInferenceService"
INFER_ROUTE = f"/{SERVICE}/ModelInfer"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"

ADMIN_SECRET = "grpc-admin-key-0123456789"
OTHER_SECRET = "grpc-other-key-0123456789"


def named(name: str, secret: str) -> str:
    """A key entry naming `secret` (server/keys.py): the logs and rate-limit buckets use the
    name."""
    return f"{name}:sha256:{hashlib.sha256(secret.encode()).hexdigest()}"


KEYS = ",".join([named("scorer", TEST_API_KEY), named("other", OTHER_SECRET)])


def key(secret: str = TEST_API_KEY, **more: str) -> dict[str, str]:
    """Call metadata (a fresh dict each time) with an API key."""
    return {"x-api-key": secret, **more}


@dataclass
class Served:
    live: LiveServer
    target: str  # host:port of its gRPC

    def client(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(url=self.target)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def log_lines(self) -> list[dict[str, Any]]:
        text = self.live.log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def serve(model_dir: Path, log: Path, env: dict[str, str] | None = None) -> Served:
    port = free_port()
    settings = {
        "FRAUD_GRPC_PORT": str(port),
        "FRAUD_API_KEYS": KEYS,
        "FRAUD_MAX_BATCH_ITEMS": str(MAX_ROWS),
        "FRAUD_POLL_INTERVAL_S": "0",
        # Generous: a loaded two-core machine must not turn a slow call into a 503.
        "FRAUD_REQUEST_DEADLINE_MS": "5000",
    }
    return Served(start_server(model_dir, log, settings | (env or {})), f"127.0.0.1:{port}")


# What the server a module shares adds to serve's settings.
SHARED_SETTINGS = {
    "FRAUD_ADMIN_KEYS": named("ops", ADMIN_SECRET),
    "FRAUD_ACCESS_LOG": "true",
    # Loopback allowed: every call passes the allowlist's checks, health and reflection too.
    "FRAUD_ALLOWED_CLIENTS": "127.0.0.0/8",
}


def make_repository(folder: Path) -> Path:
    """The shipped model as versions 3 and 4 (4 the newest) in `folder`; returns version 3's
    folder."""
    model_root = folder / MODEL
    model_root.mkdir(parents=True)
    older = make_version(SHIPPED, model_root, "3")
    make_version(SHIPPED, model_root, "4")
    return older


def sample_rows() -> np.ndarray:
    """The first 20 of the shipped model's sample rows."""
    found = json.loads((SHIPPED / "samples.json").read_text())
    values = np.asarray([r["features"] for r in found["rows"]], dtype=np.float32)
    assert values.shape[1] == N_FEATURES
    return values[:20]


def http_scores(live: LiveServer, rows: np.ndarray) -> np.ndarray:
    body = {"transactions": [{"features": [float(v) for v in r]} for r in rows]}
    with live.client(headers={"X-API-Key": TEST_API_KEY}) as http:
        answer = http.post("/v1/score/batch", json=body)
    assert answer.status_code == 200, answer.text
    return np.array([r["fraud_probability"] for r in answer.json()["results"]], dtype=np.float32)


def typed_request(rows: np.ndarray, **fields: Any) -> Any:
    """A ModelInferRequest carrying `rows` in inputs[0].contents.fp32_contents."""
    request = service_pb2.ModelInferRequest(model_name=MODEL, **fields)
    tensor = request.inputs.add(name="features", datatype="FP32", shape=list(rows.shape))
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    return request


def raw_request(rows: np.ndarray, **fields: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name=MODEL, **fields)
    request.inputs.add(name="features", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype("<f4").tobytes())
    return request


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call that must fail, through the stub."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    return error.code(), error.details()


def triton_refusal(call: Callable[[], object]) -> tuple[str, str]:
    """The same through the Triton client, which raises InferenceServerException."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), str(caught.value.message())


def infer_input(rows: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return tensor


def health_of(channel: grpc.Channel, service: str) -> Any:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )


def first_watched(channel: grpc.Channel, service: str) -> Any:
    """The first answer of the health service's Watch stream."""
    stream: Any = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    try:
        return next(stream)
    finally:
        stream.cancel()


def reflect(channel: grpc.Channel, **request: Any) -> Any:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    asked = reflection_pb2.ServerReflectionRequest(**request)
    [answer] = list(stub.ServerReflectionInfo(iter([asked]), timeout=5))
    return answer
