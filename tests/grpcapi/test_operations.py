"""Operating the gRPC server: deadlines, the full queue, the rate limit and calls given up on,
the repository methods and the admin log, the health service and the drain on SIGTERM,
reflection, metrics, request ids and the access log. Some on a server the module shares,
the rest on servers of their own with the settings they need."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2_grpc

from tests.conftest import TEST_API_KEY, LiveServer, stop_server
from tests.grpcapi.support import (
    ADMIN_SECRET,
    HEALTH,
    INFER_ROUTE,
    MODEL,
    OTHER_SECRET,
    REFLECTION,
    SERVICE,
    Served,
    first_watched,
    health_of,
    http_scores,
    infer_input,
    key,
    raw_request,
    reflect,
    refusal,
    serve,
    triton_refusal,
    typed_request,
)


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


# Deadlines


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


# The repository extension: the admin key


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


# Health and reflection


def test_health_says_serving(server: Served) -> None:
    with server.channel() as channel:
        for service in ("", SERVICE, HEALTH):
            assert health_of(channel, service).status == health_pb2.HealthCheckResponse.SERVING
        assert refusal(lambda: health_of(channel, "no.Such"))[0] == grpc.StatusCode.NOT_FOUND
        assert first_watched(channel, SERVICE).status == health_pb2.HealthCheckResponse.SERVING


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


# Metrics, the access log and request ids


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


# Servers of their own: the rate limit, the full queue, calls given up on, the drain


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
