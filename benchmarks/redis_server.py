"""Start a redis-server of our own on a free loopback port, persisting nothing, and stop it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.serving import free_port, stop_process

MISSING = "redis-server is not installed: `make redis` installs Debian's package"


def start_redis(folder: Path, timeout_s: float = 10.0) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server answering PING on a free loopback port, its files in `folder`:
    (process, redis:// URL). RuntimeError, with its log, if it does not come up."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(MISSING)
    port = free_port()
    log = folder / "redis.log"
    command = [binary, "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(folder)]
    with log.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_for_pong(process, port, log, timeout_s)
    except RuntimeError:
        stop_process(process)
        raise
    return process, f"redis://127.0.0.1:{port}/0"


@contextmanager
def redis_server(timeout_s: float = 10.0) -> Iterator[str]:
    """A fresh, empty Redis for the duration of the block; yields its redis:// URL."""
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        process, url = start_redis(Path(folder), timeout_s)
        try:
            yield url
        finally:
            stop_process(process)


def wait_for_pong(process: subprocess.Popen[bytes], port: int, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer PING in {timeout_s:.0f} s: {log.read_text()}")
