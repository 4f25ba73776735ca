"""Start a peer from its own venv on a free loopback port, wait until it is ready, stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from benchmarks.peers.bodies import PROTOCOLS
from benchmarks.serving import ROOT, Server, free_port, wait_ready

STOP_TIMEOUT_S = 10.0


@contextmanager
def peer_server(
    peer: str,
    python: Path,
    model: Path,
    name: str,
    timeout_s: float,
    settings: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`python -m benchmarks.peers.<peer>_app` in a working directory of its own, which holds
    what the peer writes (settings, its home) and is removed with it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "VIRTUAL_ENV"))}
    env |= {"PYTHONPATH": str(ROOT)} | (settings or {})
    port = free_port()
    command = [str(python), "-m", f"benchmarks.peers.{peer}_app", "--port", str(port)]
    command += ["--model", str(model), "--name", name]
    with (
        tempfile.TemporaryDirectory(prefix=f"peer-{peer}-") as work,
        tempfile.NamedTemporaryFile(prefix=f"peer-{peer}-", suffix=".log") as log,
    ):
        # A session of its own: the peer's worker processes share its process group, and
        # stopping the group stops them all.
        process = subprocess.Popen(
            command,
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = Server(port, process, Path(log.name))
        try:
            wait_ready(server, PROTOCOLS[peer].ready.format(model=name), timeout_s)
            yield server
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group the peer leads, then SIGKILL to what is left of it."""
    group = process.pid
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT_S)
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)  # children that outlived their parent
    process.wait()
