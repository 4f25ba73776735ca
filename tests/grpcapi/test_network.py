"""Where the gRPC server listens and whom it serves: the client allowlist refuses every RPC from
an address it does not name (health and reflection too), an allowed IPv6 client is served,
the peer addresses grpc reports are read right, and a gRPC port in use stops the start."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import ROOT, SERVE_PYTHON, LiveServer, free_port, start_server, stop_server
from tests.grpcapi.support import (
    ADMIN_SECRET,
    INFER_ROUTE,
    KEYS,
    MODEL,
    Served,
    first_watched,
    health_of,
    infer_input,
    key,
    make_repository,
    named,
    raw_request,
    reflect,
    refusal,
    sample_rows,
    serve,
    triton_refusal,
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return sample_rows()


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
