"""The latency gate: the server from the serving venv, then Locust at a fixed rate.

Exits with Locust's code: non-zero when p99, failures or the achieved rate miss
their budgets (benchmarks/locustfile.py). Extra arguments go to Locust, e.g.
`--gate-p99-ms 0.01` to see it fail.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from benchmarks.serving import ROOT, SERVE_PYTHON, model_env, uvicorn_server

LOCUST = Path(sys.executable).parent / "locust"


def main(argv: list[str]) -> int:
    key = secrets.token_urlsafe(24)
    env = model_env("models/creditcard/4") | {"FRAUD_API_KEYS": key}
    python = SERVE_PYTHON if SERVE_PYTHON.exists() else None
    with uvicorn_server("server.app:create_app", env, python=python) as server:
        command = [str(LOCUST), "--config", "benchmarks/locust.conf", "--host", server.url, *argv]
        result = subprocess.run(
            command, cwd=ROOT, env=os.environ | {"GATE_API_KEY": key}, timeout=120, check=False
        )
        log = server.log_text()
    if "Traceback" in log:
        print(f"server log:\n{log}", file=sys.stderr)
        return 1
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
