"""Shared fixtures: a tiny model trained and exported once per session, and a real server."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
TEST_API_KEY = "test-key-0123456789"


@pytest.fixture(autouse=True)
def fresh_key_name() -> Iterator[None]:
    """The key name the guard puts in the log context, as a new request's context has it.
    uvicorn runs each request in a context of its own; a test calling the guard directly
    runs in the test's, and would hand the name on to the tests after it."""
    from server import logs

    token = logs.key_name.set(None)
    yield
    logs.key_name.reset(token)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic LSTM-CNN trained for real: seconds, not minutes."""
    from training.config import TrainConfig
    from training.train import run

    out = tmp_path_factory.mktemp("run")
    run(
        TrainConfig(
            out_dir=str(out),
            data="synthetic",
            synthetic_rows=6000,
            epochs=2,
            batch_size=256,
            patience=1,
            verbose=0,
            model_name="tiny",
            members=1,  # one member keeps it seconds; test_export covers the ensemble
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.cli import export_run

    return export_run(tiny_run, tmp_path_factory.mktemp("models"), version="1")


class LiveServer:
    def __init__(self, base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.base_url = base_url
        self.process = process
        self.log = log

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10.0, **kwargs)  # type: ignore[arg-type]


def start_server(
    model_dir: Path,
    log: Path,
    extra_env: dict[str, str] | None = None,
    python: Path | None = None,
    extra_args: tuple[str, ...] = (),
    tls: ssl.SSLContext | None = None,
) -> LiveServer:
    """uvicorn on a free loopback port, in the serving-only venv when it exists. With `tls`
    (the client's context), it serves HTTPS and readiness is asked through that context."""
    port = free_port()
    interpreter = python or (SERVE_PYTHON if SERVE_PYTHON.exists() else Path(sys.executable))
    env = {key: value for key, value in os.environ.items() if not key.startswith("FRAUD_")}
    env.update(
        {
            "FRAUD_MODEL_REPOSITORY": str(model_dir.parent.parent),
            "FRAUD_MODEL_NAME": model_dir.parent.name,
            "FRAUD_API_KEYS": TEST_API_KEY,
            "PYTHONPATH": str(ROOT),
            # No gRPC unless a test asks for it on a port of its own: 8001 may be taken.
            "FRAUD_GRPC_PORT": "0",
        }
    )
    env.update(extra_env or {})
    with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [
                str(interpreter),
                "-m",
                "uvicorn",
                "--factory",
                "server.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--loop",
                "uvloop",
                "--http",
                "server.protocol:DeadlineHttpToolsProtocol",
                # As `make serve` and the image start it.
                "--backlog",
                "32",
                "--no-proxy-headers",
                *extra_args,
            ],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    base_url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()}")
        try:
            ready = httpx.get(f"{base_url}/v1/health/ready", timeout=1.0, verify=tls or True)
            if ready.status_code == 200:
                return LiveServer(base_url, process, log)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server not ready in 30 s: {log.read_text()}")


def start_make(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`make <args>` (a serving target) in a process group of its own, so that make and the
    uvicorn it starts are stopped together (stop_make); no FRAUD_ setting is inherited, and
    gRPC is off unless `env` gives it a port."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MAKEFLAGS"))}
    with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            ["make", "--no-print-directory", *args],
            cwd=ROOT,
            env=clean | {"FRAUD_GRPC_PORT": "0"} | (env or {}),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_make(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def live_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("server") / "uvicorn.log"
    server = start_server(tiny_model_dir, log, {"FRAUD_MAX_BODY_BYTES": "4096"})
    yield server
    stop_server(server)


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real redis-server on a free loopback port, nothing persisted; (process, URL)."""
    from benchmarks.redis_server import start_redis as start

    try:
        return start(directory)
    except RuntimeError as exc:  # not installed (make test installs it), or did not start
        pytest.fail(str(exc))


def stop_redis(process: subprocess.Popen[bytes]) -> None:
    from benchmarks.serving import stop_process

    stop_process(process)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop_redis(process)


def flush_redis(url: str) -> None:
    """Empty the database at `url` between tests (FLUSHDB, with the sync client)."""
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()
