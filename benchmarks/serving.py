"""Start an ASGI app under uvicorn on a free loopback port, wait for it, stop it."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
# The flags `make serve` and the Dockerfile use: every comparison runs on the same stack.
UVICORN_FLAGS = ("--no-access-log", "--loop", "uvloop", "--backlog", "32", "--no-proxy-headers")
SERVER_FACTORY = "server.app:create_app"
# The server runs with its own protocol class (a deadline per request against slow clients),
# as `make serve` and the image run it; the baselines run uvicorn's own.
SERVER_PROTOCOL = "server.protocol:DeadlineHttpToolsProtocol"


def http_protocol(factory: str) -> str:
    return SERVER_PROTOCOL if factory == SERVER_FACTORY else "httptools"


def shipped_model_dir(name: str = "creditcard") -> Path:
    """The newest version of the model that ships in models/: what `make serve` serves."""
    versions = [p for p in (ROOT / "models" / name).iterdir() if p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


def model_env(model_dir: Path | str) -> dict[str, str]:
    """Settings that serve the repository holding `model_dir` (<repository>/<name>/<version>),
    and the same folder to the baselines, which load one model file."""
    folder = Path(model_dir) if Path(model_dir).is_absolute() else ROOT / model_dir
    return {
        "FRAUD_MODEL_REPOSITORY": str(folder.parent.parent),
        "FRAUD_MODEL_NAME": folder.parent.name,
        "BENCH_MODEL_DIR": str(folder),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(server: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.process.returncode}:\n{server.log_text()}"
            )
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise RuntimeError(f"server not ready after {timeout_s:.0f} s:\n{server.log_text()}")


@contextmanager
def uvicorn_server(
    factory: str,
    env: dict[str, str],
    *,
    python: Path | None = None,
    ready_path: str = "/v1/health/ready",
    workers: int = 1,
    timeout_s: float = 60.0,
    cwd: Path = ROOT,
    extra_args: Sequence[str] = (),
) -> Iterator[Server]:
    """`factory` is "module:function"; FRAUD_* variables come only from `env`. `cwd` (with
    PYTHONPATH in `env`) serves another checkout's code."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    # gRPC on, as shipped, on a free port: servers started side by side must not share 8001.
    clean |= {"PYTHONPATH": str(ROOT), "FRAUD_GRPC_PORT": str(free_port())} | env
    command = [
        str(python or sys.executable),
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port := free_port()),
        "--workers",
        str(workers),
        *UVICORN_FLAGS,
        "--http",
        http_protocol(factory),
        *extra_args,
    ]
    with tempfile.NamedTemporaryFile(prefix="uvicorn-", suffix=".log") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=clean, stdout=log, stderr=subprocess.STDOUT
        )
        server = Server(port, process, Path(log.name))
        try:
            wait_ready(server, ready_path, timeout_s)
            yield server
        finally:
            stop_process(process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
