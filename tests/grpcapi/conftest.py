"""The shared server's fixtures for the gRPC tests: module-scoped, so each module that uses
them starts its own server (one repository, the settings in support.SHARED_SETTINGS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2_grpc

from tests.conftest import stop_server
from tests.grpcapi.support import SHARED_SETTINGS, Served, make_repository, sample_rows, serve


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    log = tmp_path_factory.mktemp("grpc-server") / "uvicorn.log"
    served = serve(repository, log, SHARED_SETTINGS)
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
    return sample_rows()
