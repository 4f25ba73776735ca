"""The README's gRPC example, as written, against `make serve`: it prints what the README says
it prints. Only the ports and the key differ, so that a server already on 8001 is no matter."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from tests.conftest import ROOT, free_port, start_make, stop_make

README = ROOT / "README.md"
DEV_KEY = "dev-key-change-me"  # the one `make serve` prints, and the README's example uses


def readme_grpc_example() -> tuple[str, str]:
    """The README's Python block that talks gRPC, and the output its last line's comment gives."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (code,) = [block for block in blocks if "tritonclient.grpc" in block]
    printed = re.search(r"# (\[\[.*\]\])\s*$", code)
    assert printed is not None, "the example says what it prints"
    return code, printed[1]


def test_the_readme_grpc_example_prints_what_it_says_through_make_serve(tmp_path: Path) -> None:
    code, printed = readme_grpc_example()
    assert "127.0.0.1:8001" in code and DEV_KEY in code
    port, grpc_port = free_port(), free_port()
    # GRPC_PORT is the Makefile's; an empty FRAUD_GRPC_PORT lets it through.
    serving = start_make(
        ["serve", f"PORT={port}", f"GRPC_PORT={grpc_port}"],
        tmp_path / "serve.log",
        {"FRAUD_GRPC_PORT": ""},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.2)
        ran = subprocess.run(
            [sys.executable, "-c", code.replace("127.0.0.1:8001", f"127.0.0.1:{grpc_port}")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        stop_make(serving)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip() == printed
