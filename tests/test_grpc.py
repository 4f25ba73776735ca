"""The Open Inference Protocol over gRPC, with the official Triton gRPC client (its own generated
messages and stubs), against a real uvicorn serving gRPC beside HTTP on the shipped model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import (
    ROOT,
    SERVE_PYTHON,
    TEST_API_KEY,
    LiveServer,
    free_port,
    start_server,
    stop_server,
)
from tests.model_edits import make_version

SHIPPED = ROOT / "models" / "creditcard" / "3"
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


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model as versions 3 and 4 (4 the newest); returns version 3's folder."""
    model_root = tmp_path_factory.mktemp("repo") / MODEL
    shutil.copytree(SHIPPED, model_root / "3")
    make_version(SHIPPED, model_root, "4")
    return model_root / "3"


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    log = tmp_path_factory.mktemp("grpc-server") / "uvicorn.log"
    env = {
        "FRAUD_ADMIN_KEYS": named("ops", ADMIN_SECRET),
        "FRAUD_ACCESS_LOG": "true",
        # Loopback allowed: every call passes the allowlist's checks, health and reflection too.
        "FRAUD_ALLOWED_CLIENTS": "127.0.0.0/8",
    }
    served = serve(repository, log, env)
    yield served
    stop_server(served.live)


@pytest.fixture(scope="module")
def client(server: Served) -> Iterator[triton.InferenceServerClient]:
    c = server.client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server: Served) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with server.channel() as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
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


# 1. Liveness, readiness, metadata


def test_live_ready_and_model_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "3")
    assert client.is_model_ready(MODEL, "4")
    status, message = triton_refusal(lambda: client.is_model_ready("nothing-here"))
    assert status == "StatusCode.NOT_FOUND"
    assert "unknown model 'nothing-here'" in message and MODEL in message
    status, message = triton_refusal(lambda: client.is_model_ready(MODEL, "9"))
    assert (status, message) == (
        "StatusCode.NOT_FOUND",
        f"model '{MODEL}' has no version '9' (serving 4, 3)",
    )


def test_server_metadata_is_http_s(client: triton.InferenceServerClient, server: Served) -> None:
    meta = client.get_server_metadata()
    with server.live.client() as http:
        over_http = http.get("/v2").json()
    assert meta.name == "fraud-scoring" and meta.version
    assert (meta.name, meta.version, list(meta.extensions)) == (
        over_http["name"],
        over_http["version"],
        over_http["extensions"],
    )


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    for version in ("", "3", "4"):
        meta = client.get_model_metadata(MODEL, version)
        assert meta.name == MODEL
        assert list(meta.versions) == ["4", "3"]
        assert meta.platform == "onnxruntime_onnx"
        inputs = [(t.name, t.datatype, list(t.shape)) for t in meta.inputs]
        outputs = [(t.name, t.datatype, list(t.shape)) for t in meta.outputs]
        assert inputs == [("features", "FP32", [-1, N_FEATURES])]
        assert outputs == [("fraud_probability", "FP32", [-1, 1])]
    status, message = triton_refusal(lambda: client.get_model_metadata("nothing-here"))
    assert status == "StatusCode.NOT_FOUND" and "unknown model 'nothing-here'" in message
    status, _ = triton_refusal(lambda: client.get_model_metadata(MODEL, "9"))
    assert status == "StatusCode.NOT_FOUND"


def test_a_method_not_served_is_unimplemented(client: triton.InferenceServerClient) -> None:
    status, _ = triton_refusal(lambda: client.get_inference_statistics(MODEL, headers=key()))
    assert status == "StatusCode.UNIMPLEMENTED"


# 2. ModelInfer, both encodings, against HTTP's scores


@pytest.mark.parametrize("ask_output", [False, True])
def test_raw_infer_equals_http_scores(
    client: triton.InferenceServerClient, server: Served, rows: np.ndarray, ask_output: bool
) -> None:
    outputs = [triton.InferRequestedOutput("fraud_probability")] if ask_output else None
    result = client.infer(
        MODEL, [infer_input(rows)], outputs=outputs, request_id="req-7", headers=key()
    )
    got = result.as_numpy("fraud_probability")
    assert got is not None and got.dtype == np.float32 and got.shape == (len(rows), 1)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (MODEL, "4", "req-7")
    # Raw in, raw out: the values travel in raw_output_contents, not in contents.
    assert len(response.raw_output_contents) == 1
    assert len(response.outputs[0].contents.fp32_contents) == 0
    expected = http_scores(server.live, rows)
    np.testing.assert_allclose(got.ravel(), expected, rtol=1e-6, atol=1e-7)
    assert len(np.unique(expected)) > 1  # the rows are told apart: not a constant answer
    with server.live.client(headers={"X-API-Key": TEST_API_KEY}) as http:
        one = http.post("/v1/score", json={"features": [float(v) for v in rows[3]]}).json()
    np.testing.assert_allclose(got[3, 0], one["fraud_probability"], rtol=1e-6, atol=1e-7)


def test_typed_contents_infer_equals_http_scores(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, server: Served, rows: np.ndarray
) -> None:
    response = stub.ModelInfer(typed_request(rows, id="typed-1"), metadata=tuple(key().items()))
    assert (response.model_name, response.model_version, response.id) == (MODEL, "4", "typed-1")
    assert len(response.raw_output_contents) == 0  # typed in, typed out
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == (
        "fraud_probability",
        "FP32",
        [len(rows), 1],
    )
    got = np.asarray(output.contents.fp32_contents, dtype=np.float32)
    np.testing.assert_allclose(got, http_scores(server.live, rows), rtol=1e-6, atol=1e-7)
    # And the same values as the raw encoding gives.
    raw = stub.ModelInfer(raw_request(rows), metadata=tuple(key().items()))
    np.testing.assert_array_equal(np.frombuffer(raw.raw_output_contents[0], dtype="<f4"), got)


def test_model_version_selection(client: triton.InferenceServerClient, rows: np.ndarray) -> None:
    answered = {}
    for version in ("", "3", "4"):
        result = client.infer(MODEL, [infer_input(rows[:2])], model_version=version, headers=key())
        answered[version] = result.get_response().model_version
    assert answered == {"": "4", "3": "3", "4": "4"}
    status, message = triton_refusal(
        lambda: client.infer(MODEL, [infer_input(rows[:2])], model_version="9", headers=key())
    )
    assert (status, message) == (
        "StatusCode.NOT_FOUND",
        f"model '{MODEL}' has no version '9' (serving 4, 3)",
    )
    status, message = triton_refusal(
        lambda: client.infer("nothing-here", [infer_input(rows[:2])], headers=key())
    )
    assert status == "StatusCode.NOT_FOUND" and "unknown model 'nothing-here'" in message


# 3. Keys


def test_infer_needs_a_valid_key(client: triton.InferenceServerClient, rows: np.ndarray) -> None:
    tensors = [infer_input(rows[:1])]
    status, message = triton_refusal(lambda: client.infer(MODEL, tensors))
    assert status == "StatusCode.UNAUTHENTICATED"
    assert message == "send an API key in the x-api-key metadata"
    status, message = triton_refusal(lambda: client.infer(MODEL, tensors, headers=key("wrong")))
    assert (status, message) == ("StatusCode.PERMISSION_DENIED", "the API key is not valid")
    # The admin key is no scoring key.
    status, _ = triton_refusal(lambda: client.infer(MODEL, tensors, headers=key(ADMIN_SECRET)))
    assert status == "StatusCode.PERMISSION_DENIED"
    for secret in (TEST_API_KEY, OTHER_SECRET):
        result = client.infer(MODEL, tensors, headers=key(secret))
        assert result.as_numpy("fraud_probability") is not None


# 4. Bad tensors


def shape_error(shape: list[int]) -> str:
    return f"the input shape must be [n, {N_FEATURES}] with 1 <= n <= {MAX_ROWS}, got {shape!r}"


def renamed(request: Any) -> None:
    request.inputs[0].name = "input"


def as_fp64(request: Any) -> None:
    tensor = request.inputs[0]
    tensor.datatype = "FP64"
    tensor.contents.fp64_contents.extend(tensor.contents.fp32_contents)
    tensor.contents.ClearField("fp32_contents")


def as_int32(request: Any) -> None:
    tensor = request.inputs[0]
    tensor.datatype = "INT32"
    tensor.contents.int_contents.extend([1] * len(tensor.contents.fp32_contents))
    tensor.contents.ClearField("fp32_contents")


def in_int_contents(request: Any) -> None:
    tensor = request.inputs[0]
    tensor.contents.int_contents.extend([1] * len(tensor.contents.fp32_contents))
    tensor.contents.ClearField("fp32_contents")


def shaped(shape: list[int]) -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        size = int(np.prod(shape))
        tensor = request.inputs[0]
        del tensor.shape[:]
        tensor.shape.extend(shape)
        tensor.contents.ClearField("fp32_contents")
        tensor.contents.fp32_contents.extend([0.5] * size)

    return edit


def one_number_short(request: Any) -> None:
    del request.inputs[0].contents.fp32_contents[-1]


def also_raw(request: Any) -> None:
    request.raw_input_contents.append(b"\0" * (2 * N_FEATURES * 4))


def with_value(value: float) -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        request.inputs[0].contents.fp32_contents[5] = value

    return edit


def two_inputs(request: Any) -> None:
    request.inputs.add().CopyFrom(request.inputs[0])


def unknown_output(request: Any) -> None:
    request.outputs.add(name="probability")


def unnamed_model(request: Any) -> None:
    request.model_name = ""


def raw_of_length(length: int) -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        request.inputs[0].ClearField("contents")
        request.raw_input_contents.append(b"\0" * length)

    return edit


def two_raw_entries(request: Any) -> None:
    raw_of_length(2 * N_FEATURES * 4)(request)
    request.raw_input_contents.append(b"")


BAD_TENSORS = {
    "wrong name": (renamed, "the input tensor must be named 'features'"),
    "FP64": (as_fp64, "the input datatype must be FP32"),
    "INT32": (as_int32, "the input datatype must be FP32"),
    "wrong feature count": (shaped([2, N_FEATURES - 1]), shape_error([2, N_FEATURES - 1])),
    "no rows": (shaped([0, N_FEATURES]), shape_error([0, N_FEATURES])),
    "too many rows": (shaped([MAX_ROWS + 1, N_FEATURES]), shape_error([MAX_ROWS + 1, N_FEATURES])),
    "one dimension": (shaped([N_FEATURES]), shape_error([N_FEATURES])),
    "values short of the shape": (
        one_number_short,
        f"contents.fp32_contents must hold {2 * N_FEATURES} numbers "
        f"(shape [2, {N_FEATURES}]), got {2 * N_FEATURES - 1}",
    ),
    "raw bytes of the wrong length": (
        raw_of_length(100),
        f"raw_input_contents[0] must be {2 * N_FEATURES * 4} bytes "
        f"(shape [2, {N_FEATURES}] of FP32), got 100",
    ),
    "two raw entries": (two_raw_entries, "raw_input_contents must hold one entry per input: one"),
    "contents and raw": (also_raw, "the input has both contents and raw_input_contents"),
    "NaN": (with_value(float("nan")), "the input holds NaN or infinite values"),
    "infinity": (with_value(float("inf")), "the input holds NaN or infinite values"),
    "two inputs": (two_inputs, "inputs must hold exactly one tensor, 'features'"),
    "unknown output": (
        unknown_output,
        "unknown output 'probability'; this model has ['fraud_probability']",
    ),
    "values in int_contents": (
        in_int_contents,
        "the input's values must be in contents.fp32_contents or raw_input_contents "
        "(datatype FP32), not contents.int_contents",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_tensors_are_invalid_argument_with_the_reason(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, rows: np.ndarray, case: str
) -> None:
    edit, message = BAD_TENSORS[case]
    request = typed_request(rows[:2])
    edit(request)
    metadata = tuple(key().items())
    assert refusal(lambda: stub.ModelInfer(request, metadata=metadata)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
    )


def test_a_request_naming_no_model_is_not_found(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, rows: np.ndarray
) -> None:
    request = typed_request(rows[:2])
    unnamed_model(request)
    assert refusal(lambda: stub.ModelInfer(request, metadata=tuple(key().items()))) == (
        grpc.StatusCode.NOT_FOUND,
        "name the model in model_name",
    )


def test_a_bad_shape_through_the_client(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("features", [3, N_FEATURES + 1], "FP32")
    tensor.set_data_from_numpy(np.zeros((3, N_FEATURES + 1), dtype=np.float32))
    status, message = triton_refusal(lambda: client.infer(MODEL, [tensor], headers=key()))
    assert (status, message) == (
        "StatusCode.INVALID_ARGUMENT",
        shape_error([3, N_FEATURES + 1]),
    )


def test_a_message_over_the_batch_body_limit_is_refused_unread(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    """FRAUD_MAX_BATCH_BODY_BYTES (1 MiB) caps a gRPC message as it caps an HTTP body."""
    request = raw_request(np.zeros((2, N_FEATURES), dtype=np.float32))
    request.raw_input_contents[0] = b"\0" * (1024 * 1024 + 1)
    code, message = refusal(lambda: stub.ModelInfer(request, metadata=tuple(key().items())))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in message


# 5. Deadlines


def test_a_deadline_too_short_is_not_scored(
    client: triton.InferenceServerClient,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    server: Served,
    rows: np.ndarray,
) -> None:
    late = key(**{"x-request-deadline-ms": "0.001"})
    expired = counter(server.live, "fraud_deadline_exceeded_total")
    status, message = triton_refusal(
        lambda: client.infer(MODEL, [infer_input(rows[:2])], headers=late, client_timeout=10)
    )
    assert (status, message) == (
        "StatusCode.DEADLINE_EXCEEDED",
        "the request waited past its deadline; it was not scored",
    )
    assert counter(server.live, "fraud_deadline_exceeded_total") == expired + 1
    bad = key(**{"x-request-deadline-ms": "soon"})
    assert refusal(lambda: stub.ModelInfer(raw_request(rows[:2]), metadata=tuple(bad.items()))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "X-Request-Deadline-Ms must be a positive number of milliseconds",
    )
    generous = key(**{"x-request-deadline-ms": "5000"})
    result = client.infer(MODEL, [infer_input(rows[:2])], headers=generous, client_timeout=10)
    assert result.as_numpy("fraud_probability").shape == (2, 1)
    result = client.infer(MODEL, [infer_input(rows[:2])], headers=key(), client_timeout=30)
    assert result.as_numpy("fraud_probability").shape == (2, 1)


# 7. The repository extension: the admin key


def test_repository_calls_need_the_admin_key(
    client: triton.InferenceServerClient, server: Served
) -> None:
    for call in (
        lambda headers: client.get_model_repository_index(headers=headers),
        lambda headers: client.load_model(MODEL, headers=headers),
    ):
        status, message = triton_refusal(lambda call=call: call(None))
        assert (status, message) == (
            "StatusCode.UNAUTHENTICATED",
            "send an API key in the x-api-key metadata",
        )
        status, _ = triton_refusal(lambda call=call: call(key()))
        assert status == "StatusCode.PERMISSION_DENIED"
    index = client.get_model_repository_index(headers=key(ADMIN_SECRET))
    assert [(m.name, m.version, m.state) for m in index.models] == [
        (MODEL, "4", "READY"),
        (MODEL, "3", "READY"),
    ]
    client.load_model(MODEL, headers=key(ADMIN_SECRET))
    status, message = triton_refusal(
        lambda: client.load_model("nothing-here", headers=key(ADMIN_SECRET))
    )
    assert status == "StatusCode.NOT_FOUND" and "unknown model 'nothing-here'" in message
    assert client.is_model_ready(MODEL, "4")
    admin = [line for line in server.log_lines() if line["logger"] == "uvicorn.error.fraud.admin"]
    assert [(a["key_name"], a["action"], a["model"], a["status"]) for a in admin] == [
        ("ops", "load", MODEL, "OK"),
        ("ops", "load", "'nothing-here'", "NOT_FOUND"),
    ]
    assert admin[0]["message"].startswith(f"admin key ops: load of model {MODEL}: OK")
    text = server.live.log.read_text()
    assert ADMIN_SECRET not in text and TEST_API_KEY not in text


# 8. Health and reflection


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


def test_health_says_serving(server: Served) -> None:
    with server.channel() as channel:
        for service in ("", SERVICE, HEALTH):
            assert health_of(channel, service).status == health_pb2.HealthCheckResponse.SERVING
        assert refusal(lambda: health_of(channel, "no.Such"))[0] == grpc.StatusCode.NOT_FOUND
        assert first_watched(channel, SERVICE).status == health_pb2.HealthCheckResponse.SERVING


def reflect(channel: grpc.Channel, **request: Any) -> Any:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    asked = reflection_pb2.ServerReflectionRequest(**request)
    [answer] = list(stub.ServerReflectionInfo(iter([asked]), timeout=5))
    return answer


def test_reflection_describes_the_services(server: Served) -> None:
    with server.channel() as channel:
        listed = reflect(channel, list_services="").list_services_response.service
        assert {s.name for s in listed} >= {SERVICE, HEALTH, REFLECTION}
        found = reflect(channel, file_containing_symbol=SERVICE).file_descriptor_response
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b) for b in found.file_descriptor_proto
        ]
        ours = [f for f in files if f.package == "inference"]
        assert [s.name for f in ours for s in f.service] == ["GRPCInferenceService"]
        methods = {m.name for f in ours for s in f.service for m in s.method}
        assert {"ModelInfer", "ModelMetadata", "RepositoryModelLoad"} <= methods
        missing = reflect(channel, file_containing_symbol="inference.Nothing")
        assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


# 9. Metrics, the access log and request ids


def scrape(live: LiveServer) -> list[Any]:
    """Every sample of GET /metrics."""
    with live.client() as http:
        text = http.get("/metrics").text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def request_counts(live: LiveServer) -> dict[tuple[str, str, str, str], float]:
    """fraud_requests_total by (route, model, status, protocol)."""
    return {
        (s.labels["route"], s.labels["model"], s.labels["status"], s.labels["protocol"]): s.value
        for s in scrape(live)
        if s.name == "fraud_requests_total"
    }


def counter(live: LiveServer, name: str) -> float:
    """An unlabelled counter's value."""
    [value] = [s.value for s in scrape(live) if s.name == name]
    return float(value)


def test_metrics_count_grpc_calls_by_method_code_and_model(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, server: Served, rows: np.ndarray
) -> None:
    http_scores(server.live, rows[:2])  # at least one HTTP series
    ok = (INFER_ROUTE, MODEL, "OK", "grpc")
    invalid = (INFER_ROUTE, MODEL, "INVALID_ARGUMENT", "grpc")
    unauthenticated = (INFER_ROUTE, MODEL, "UNAUTHENTICATED", "grpc")
    before = request_counts(server.live)
    stub.ModelInfer(raw_request(rows[:2]), metadata=tuple(key().items()))
    stub.ModelInfer(raw_request(rows[:2]), metadata=tuple(key().items()))
    refusal(lambda: stub.ModelInfer(raw_request(rows[:, :3]), metadata=tuple(key().items())))
    refusal(lambda: stub.ModelInfer(raw_request(rows[:2])))
    unknown = typed_request(rows[:2])
    unknown.model_name = "nothing-here"
    refusal(lambda: stub.ModelInfer(unknown, metadata=tuple(key().items())))
    after = request_counts(server.live)
    assert after[ok] - before.get(ok, 0) == 2
    assert after[invalid] - before.get(invalid, 0) == 1
    assert after[unauthenticated] - before.get(unauthenticated, 0) == 1
    # A model that is not served is no label: clients cannot grow the series.
    not_found = (INFER_ROUTE, "", "NOT_FOUND", "grpc")
    assert after[not_found] - before.get(not_found, 0) == 1
    assert ("/v1/score/batch", MODEL, "200", "http") in after
    for route, _, _, protocol in after:
        assert protocol == ("grpc" if route.startswith(f"/{SERVICE}/") else "http"), route


def test_request_ids_come_back_in_the_trailers_and_reach_the_access_log(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, server: Served, rows: np.ndarray
) -> None:
    given = key(**{"x-request-id": "grpc-id-0001"})
    _, call = stub.ModelInfer.with_call(raw_request(rows[:2]), metadata=tuple(given.items()))
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-id-0001"
    refused = key(**{"x-request-id": "grpc-id-0002"})
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(raw_request(rows[:, :3]), metadata=tuple(refused.items()))
    error: Any = caught.value
    assert dict(error.trailing_metadata())["x-request-id"] == "grpc-id-0002"
    # None given, or one that is no valid id: the server makes one.
    _, call = stub.ModelInfer.with_call(raw_request(rows[:2]), metadata=tuple(key().items()))
    made = dict(call.trailing_metadata())["x-request-id"]
    bad = key(**{"x-request-id": "spaces are not allowed"})
    _, call = stub.ModelInfer.with_call(raw_request(rows[:2]), metadata=tuple(bad.items()))
    remade = dict(call.trailing_metadata())["x-request-id"]
    assert made and remade and made != remade and " " not in remade
    access = {
        line["request_id"]: line
        for line in server.log_lines()
        if line["logger"] == "uvicorn.error.fraud.access"
    }
    ok, invalid = access["grpc-id-0001"], access["grpc-id-0002"]
    assert ok["message"] == f"GRPC {INFER_ROUTE} OK"
    assert (ok["method"], ok["route"], ok["status"], ok["key_name"]) == (
        "GRPC",
        INFER_ROUTE,
        "OK",
        "scorer",
    )
    assert invalid["message"] == f"GRPC {INFER_ROUTE} INVALID_ARGUMENT"
    assert invalid["key_name"] == "scorer"
    assert access[made]["message"] == f"GRPC {INFER_ROUTE} OK"


# 5 (continued), 6, 8 (drain), 10, 11: servers of their own


@pytest.fixture
def limited(repository: Path, tmp_path: Path) -> Iterator[Served]:
    env = {"FRAUD_RATE_LIMIT_RPS": "0.001", "FRAUD_RATE_LIMIT_BURST": "2"}
    served = serve(repository, tmp_path / "uvicorn.log", env)
    yield served
    stop_server(served.live)


def test_rate_limit_is_resource_exhausted_per_key_and_shared_with_http(
    limited: Served, rows: np.ndarray
) -> None:
    client = limited.client()
    tensors = [infer_input(rows[:1])]
    for _ in range(2):
        client.infer(MODEL, tensors, headers=key())
    status, message = triton_refusal(lambda: client.infer(MODEL, tensors, headers=key()))
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    assert message == "over the rate limit of 0.001 requests/s for this key"
    client.infer(MODEL, tensors, headers=key(OTHER_SECRET))  # another key, its own bucket
    # One bucket per key for both protocols: HTTP is refused too.
    with limited.live.client(headers={"X-API-Key": TEST_API_KEY}) as http:
        body = {"features": [float(v) for v in rows[0]]}
        assert http.post("/v1/score", json=body).status_code == 429
    client.close()
    counts = request_counts(limited.live)
    assert counts[(INFER_ROUTE, MODEL, "RESOURCE_EXHAUSTED", "grpc")] == 1
    assert counter(limited.live, "fraud_rate_limited_total") == 2  # gRPC's and HTTP's


@pytest.fixture
def one_in_the_queue(repository: Path, tmp_path: Path) -> Iterator[Served]:
    # No server deadline: the only refusal possible is the full queue's.
    env = {
        "FRAUD_MAX_QUEUE": "1",
        "FRAUD_REQUEST_DEADLINE_MS": "0",
        "FRAUD_INFERENCE_MODE": "thread",
    }
    served = serve(repository, tmp_path / "uvicorn.log", env)
    yield served
    stop_server(served.live)


async def concurrent_infers(target: str, request: Any, n: int) -> list[tuple[Any, str]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = tuple(key().items())

        async def one() -> tuple[Any, str]:
            try:
                await stub.ModelInfer(request, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as error:
                return error.code(), error.details() or ""
            return grpc.StatusCode.OK, ""

        return await asyncio.gather(*(one() for _ in range(n)))


def test_a_full_queue_is_unavailable(one_in_the_queue: Served, rows: np.ndarray) -> None:
    answers = asyncio.run(concurrent_infers(one_in_the_queue.target, raw_request(rows), 200))
    codes = {code for code, _ in answers}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, answers
    refused = [message for code, message in answers if code == grpc.StatusCode.UNAVAILABLE]
    assert refused and len(refused) < len(answers)
    assert set(refused) == {"the server is at capacity; retry shortly"}
    assert counter(one_in_the_queue.live, "fraud_shed_total") == len(refused)


@pytest.fixture
def slow_batches(repository: Path, tmp_path: Path) -> Iterator[Served]:
    # Every call waits 0.4 s in the queue for company: long enough to give up on it.
    env = {
        "FRAUD_MAX_QUEUE_DELAY_US": "400000",
        "FRAUD_REQUEST_DEADLINE_MS": "0",
        "FRAUD_ACCESS_LOG": "true",
    }
    served = serve(repository, tmp_path / "uvicorn.log", env)
    yield served
    stop_server(served.live)


def test_a_call_given_up_on_is_counted_as_the_callers_not_as_a_server_error(
    slow_batches: Served, rows: np.ndarray
) -> None:
    metadata = tuple(key().items())
    with slow_batches.channel() as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        started = time.monotonic()
        stub.ModelInfer(raw_request(rows[:1]), metadata=metadata, timeout=10)
        assert time.monotonic() - started >= 0.3  # it did wait for company
        code, _ = refusal(
            lambda: stub.ModelInfer(raw_request(rows[:1]), metadata=metadata, timeout=0.1)
        )
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        future: Any = stub.ModelInfer.future(raw_request(rows[:1]), metadata=metadata)
        time.sleep(0.1)
        assert future.cancel()
    expected = {"OK": 1, "DEADLINE_EXCEEDED": 1, "CANCELLED": 1}
    counts: dict[str, float] = {}
    deadline = time.monotonic() + 5.0
    while counts != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = {
            status: n
            for (route, _, status, _), n in request_counts(slow_batches.live).items()
            if route == INFER_ROUTE
        }
    assert counts == expected  # no INTERNAL: the server did nothing wrong
    access = [
        line["message"]
        for line in slow_batches.log_lines()
        if line["logger"] == "uvicorn.error.fraud.access" and line["method"] == "GRPC"
    ]
    assert sorted(access) == sorted(f"GRPC {INFER_ROUTE} {status}" for status in expected)
    assert "unexpected error" not in slow_batches.live.log.read_text()


@pytest.fixture
def draining(repository: Path, tmp_path: Path) -> Iterator[Served]:
    served = serve(repository, tmp_path / "uvicorn.log", {"FRAUD_SHUTDOWN_DRAIN_S": "3"})
    yield served
    stop_server(served.live)


def test_sigterm_drains_health_not_serving_while_infer_still_answers(
    draining: Served, rows: np.ndarray
) -> None:
    client = draining.client()
    with draining.channel() as channel:
        assert health_of(channel, "").status == health_pb2.HealthCheckResponse.SERVING
        signalled = time.monotonic()
        draining.live.process.send_signal(signal.SIGTERM)
        statuses = {}
        while time.monotonic() - signalled < 2.5:
            statuses = {s: health_of(channel, s).status for s in ("", SERVICE, HEALTH)}
            if set(statuses.values()) == {health_pb2.HealthCheckResponse.NOT_SERVING}:
                break
            time.sleep(0.05)
        assert set(statuses.values()) == {health_pb2.HealthCheckResponse.NOT_SERVING}
        result = client.infer(MODEL, [infer_input(rows[:3])], headers=key())
        assert result.as_numpy("fraud_probability").shape == (3, 1)
        assert not client.is_server_ready()
        assert not client.is_model_ready(MODEL)
        assert client.is_server_live()
        with draining.live.client() as http:  # HTTP drains with it: one state
            assert http.get("/v1/health/ready").status_code == 503
        assert time.monotonic() - signalled < 3.0  # all of it within the drain
    client.close()
    # uvicorn ends by raising the signal again; the watchdog's exit would be 1.
    assert draining.live.process.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in draining.live.log.read_text()


def start_refused_server(model_dir: Path, log: Path, env: dict[str, str]) -> Served:
    """start_server's uvicorn, for a server that refuses loopback: ready once HTTP answers at
    all (its 403), which uvicorn does only after the lifespan (gRPC included) started."""
    port, grpc_port = free_port(), free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    environment |= {
        "FRAUD_MODEL_REPOSITORY": str(model_dir.parent.parent),
        "FRAUD_MODEL_NAME": model_dir.parent.name,
        "FRAUD_API_KEYS": KEYS,
        "FRAUD_GRPC_PORT": str(grpc_port),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    command = [str(SERVE_PYTHON), "-m", "uvicorn", "--factory", "server.app:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=handle, stderr=subprocess.STDOUT
        )
    live = LiveServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            httpx.get(f"{live.base_url}/v1/health/live", timeout=1.0)
            return Served(live, f"127.0.0.1:{grpc_port}")
        except httpx.TransportError:
            time.sleep(0.1)
    stop_server(live)
    raise AssertionError(f"server not up in 30 s: {log.read_text()}")


@pytest.fixture
def elsewhere_only(repository: Path, tmp_path: Path) -> Iterator[Served]:
    env = {
        "FRAUD_ALLOWED_CLIENTS": "10.0.0.0/8",
        "FRAUD_ADMIN_KEYS": named("ops", ADMIN_SECRET),
        "FRAUD_ACCESS_LOG": "true",
    }
    served = start_refused_server(repository, tmp_path / "uvicorn.log", env)
    yield served
    stop_server(served.live)


def test_the_allowlist_refuses_every_rpc_from_loopback(
    elsewhere_only: Served, rows: np.ndarray
) -> None:
    with elsewhere_only.live.client() as http:
        assert http.get("/v1/health/live").status_code == 403
    admin = key(ADMIN_SECRET)
    stub_calls: dict[str, Callable[[Any], object]] = {
        "ServerLive": lambda s: s.ServerLive(service_pb2.ServerLiveRequest()),
        "ServerReady": lambda s: s.ServerReady(service_pb2.ServerReadyRequest()),
        "ModelReady": lambda s: s.ModelReady(service_pb2.ModelReadyRequest(name=MODEL)),
        "ServerMetadata": lambda s: s.ServerMetadata(service_pb2.ServerMetadataRequest()),
        "ModelMetadata": lambda s: s.ModelMetadata(service_pb2.ModelMetadataRequest(name=MODEL)),
        "ModelInfer": lambda s: s.ModelInfer(raw_request(rows[:2]), metadata=tuple(key().items())),
        "RepositoryIndex": lambda s: s.RepositoryIndex(
            service_pb2.RepositoryIndexRequest(), metadata=tuple(admin.items())
        ),
        "RepositoryModelLoad": lambda s: s.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name=MODEL), metadata=tuple(admin.items())
        ),
    }
    with elsewhere_only.channel() as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for name, call in stub_calls.items():
            assert refusal(lambda call=call: call(stub)) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "this client address is not allowed",
            ), name
        # The health and reflection services too: a refused client learns nothing.
        assert refusal(lambda: health_of(channel, ""))[0] == grpc.StatusCode.PERMISSION_DENIED
        assert refusal(lambda: first_watched(channel, ""))[0] == grpc.StatusCode.PERMISSION_DENIED
        assert refusal(lambda: reflect(channel, list_services=""))[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    client = elsewhere_only.client()
    status, _ = triton_refusal(lambda: client.is_server_live())
    assert status == "StatusCode.PERMISSION_DENIED"
    client.close()
    access = [
        line["message"]
        for line in elsewhere_only.log_lines()
        if line["logger"] == "uvicorn.error.fraud.access"
    ]
    assert f"GRPC {INFER_ROUTE} PERMISSION_DENIED" in access


@pytest.fixture
def over_ipv6(repository: Path, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    env = {
        "FRAUD_GRPC_PORT": str(port),
        "FRAUD_GRPC_HOST": "::1",
        "FRAUD_ALLOWED_CLIENTS": "127.0.0.1/32,::1/128",  # HTTP's readiness, gRPC's calls
    }
    served = serve(repository, tmp_path / "uvicorn.log", env)
    yield Served(served.live, f"[::1]:{port}")
    stop_server(served.live)


def test_an_allowed_ipv6_client_is_served(over_ipv6: Served, rows: np.ndarray) -> None:
    """grpc names an IPv6 peer as a URI ("ipv6:%5B::1%5D:port"): the allowlist must read the
    address out of it, or every IPv6 client is refused."""
    client = over_ipv6.client()
    assert client.is_server_live()
    result = client.infer(MODEL, [infer_input(rows[:2])], headers=key())
    assert result.as_numpy("fraud_probability").shape == (2, 1)
    client.close()
    with over_ipv6.channel() as channel:
        assert health_of(channel, "").status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:%5B::1%5D:5000", "::1"),
        ("ipv6:%5B::ffff:10.1.2.3%5D:443", "::ffff:10.1.2.3"),
        ("ipv6:[2001:db8::7]:80", "2001:db8::7"),
        ("unix:/run/fraud.sock", ""),
        ("", ""),
    ],
)
def test_peer_address(peer: str, address: str) -> None:
    from server.grpcapi.server import peer_address

    assert peer_address(peer) == address


def test_a_grpc_port_in_use_stops_the_start_with_a_clear_message(
    repository: Path, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as caught:
            start_server(repository, tmp_path / "uvicorn.log", {"FRAUD_GRPC_PORT": str(port)})
    text = str(caught.value)
    assert "server exited with" in text
    assert f"cannot serve gRPC on 127.0.0.1:{port}" in text
    assert "is the port in use?" in text and "FRAUD_GRPC_PORT" in text
