"""wrk runs against a loopback server, and the figures read from `wrk --latency` output."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.serving import ROOT

LUA = ROOT / "benchmarks/wrk_post.lua"
WRK_THREADS = 1  # see run_wrk_script
WRK_TIMEOUT_S = 10  # wrk's default of 2 s would turn keras_predict's queueing into errors
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests/s, latency percentiles in ms, and error counts from `wrk --latency` output."""
    result: dict[str, Any] = {"requests": int(re.search(r"(\d+) requests in", out)[1])}
    result["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    if result["requests"]:  # with none, wrk prints a latency of 0
        pattern = r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$"
        for q, value, unit in re.findall(pattern, out, re.M):
            result[f"p{q}_ms"] = round(float(value) * UNITS[unit], 4)
    # wrk prints these two lines only when a count is not zero.
    found = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    counts = map(int, found.groups()) if found else (0, 0, 0, 0)
    result["socket_errors"] = dict(
        zip(("connect", "read", "write", "timeout"), counts, strict=True)
    )
    found = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(found[1]) if found else 0
    result["errors"] = result["non_2xx"] + sum(result["socket_errors"].values())
    return result


def run_wrk(
    port: int, path: str, concurrency: int, seconds: int, bodies: Path, key: str
) -> dict[str, Any]:
    """wrk_post.lua cycling through `bodies`, one JSON body a line."""
    return run_wrk_script(port, path, concurrency, seconds, LUA, [str(bodies), key])


def run_wrk_script(
    port: int, path: str, concurrency: int, seconds: int, script: Path, script_args: Sequence[str]
) -> dict[str, Any]:
    # One wrk thread at every concurrency: this machine has 2 cores, the server (one worker, one
    # ORT thread) needs one, and one wrk thread sends ~20,000 requests/s here on a third of a core,
    # more than any target serves; a second wrk thread would take CPU from the server it measures.
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{concurrency}", f"-d{seconds}s"]
    command += [f"--timeout={WRK_TIMEOUT_S}s", "--latency", "-s", str(script)]
    command += [f"http://127.0.0.1:{port}{path}", "--", *script_args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr}")
    return parse_wrk(done.stdout)
