"""A connection storm: 256, 1,024 and 4,096 connections against one server process.

For each storm size, in one run against one server:
- wrk, closed loop (each connection sends its next request as soon as it is answered), as
  the callers' own load tools would: latency of every answer, socket timeouts, 200s/s;
- the same closed loop from benchmarks/closedloop.py, which records each connection's
  answers: the spread of 200s per connection (does any connection starve?) and whether the
  slow answers are the first ones on new connections;
- the open-loop generator (benchmarks/loadgen.py) offering `--open-factor` times the
  capacity over a pool of that many connections, as payment traffic arrives;
- after each storm, a light probe (8 connections): from which quarter second on the p99
  of its requests is back to what it was before any storm.

Capacity is the 200s/s wrk gets at 32 connections in the same run, before the storms. The
targets: no socket timeouts; p99 of every answer <= 250 ms and the slowest <= 1 s; 200s >=
0.7 x capacity; the probe's p99 back to normal within 2 s. Every miss is listed in
"failures", and the exit status is 1 if there is any.

    python -m benchmarks.storm [--connections 256,1024,4096] [--storm-s 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.closedloop import run_closed_loop
from benchmarks.loadgen import Phase, report, run_load, score_requests, transaction_bodies
from benchmarks.serving import (
    SERVE_PYTHON,
    UVICORN_FLAGS,
    model_env,
    shipped_model_dir,
    uvicorn_server,
)
from benchmarks.wrk import LUA, parse_wrk

API_KEY = "storm-key"
HOST = "127.0.0.1"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}
PROBE_CONNECTIONS = 8
WINDOW_S = 0.25


def raise_file_limit(needed: int) -> int:
    """Open-file limit up to the hard limit (each connection is a descriptor on both ends)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def wrk(port: int, connections: int, seconds: int, bodies: Path, timeout_s: int) -> dict[str, Any]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s"]
    command += ["--latency", "-s", str(LUA), f"http://{HOST}:{port}/v1/score"]
    command += ["--", str(bodies), API_KEY]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr}")
    result = parse_wrk(done.stdout)
    found = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)", done.stdout)
    result["max_ms"] = round(float(found[1]) * UNITS[found[2]], 2) if found else None
    result["ok_per_s"] = round((result["requests"] - result["non_2xx"]) / seconds, 1)
    return result


def status_counts(statuses: np.ndarray) -> dict[str, int]:
    """Answers by status; "0" for requests with no answer."""
    values, counts = np.unique(statuses, return_counts=True)
    return {str(v): int(n) for v, n in zip(values, counts, strict=True)}


def percentiles(values_ms: np.ndarray) -> dict[str, float]:
    if len(values_ms) == 0:
        return {}
    return {
        "p50_ms": round(float(np.percentile(values_ms, 50)), 2),
        "p99_ms": round(float(np.percentile(values_ms, 99)), 2),
        "max_ms": round(float(values_ms.max()), 2),
    }


def per_connection(
    requests: list[bytes], port: int, connections: int, seconds: float
) -> dict[str, Any]:
    """The closed loop with a record per connection: who got served, and how evenly."""
    record = run_closed_loop(HOST, port, requests, connections, seconds)
    rows = record.arrays()
    latency = (rows["done"] - rows["sent"]) * 1e3
    ok = rows["status"] == 200
    counts = np.bincount(rows["connection"][ok], minlength=connections).astype(float)
    answered = rows["status"] > 0
    spread = {
        # Jain's index: 1.0 when every connection got as many 200s as every other.
        "jain_index": round(float(counts.sum() ** 2 / (connections * (counts**2).sum())), 3)
        if counts.sum()
        else 0.0,
        "served_share": round(float((counts > 0).mean()), 3),
        "p10_median_p90": [float(np.percentile(counts, q)) for q in (10, 50, 90)],
    }
    return {
        "ok_per_s": round(float(ok.sum() / seconds), 1),
        "statuses": status_counts(rows["status"]),
        "timeouts": int((~answered).sum()),
        "all": percentiles(latency[answered]),
        "first_on_connection": percentiles(latency[answered & rows["first"]]),
        "later": percentiles(latency[answered & ~rows["first"]]),
        "connects": record.connects,
        "per_connection_200s": spread,
    }


def open_loop(
    requests: list[bytes], port: int, connections: int, rate: float, seconds: float
) -> dict[str, Any]:
    results = run_load(
        HOST, port, requests, [Phase("storm", rate, seconds)], max_connections=connections
    )
    rows = results.arrays()
    answered = rows["status"] > 0
    served = (rows["done"] - rows["sent"]) * 1e3
    return {
        "offered_per_s": rate,
        "ok_per_s": round(float((rows["status"] == 200).sum() / seconds), 1),
        "statuses": status_counts(rows["status"]),
        "no_answer": int((~answered).sum()),
        "abandoned_in_pool": len(results.abandoned_at),
        "server": percentiles(served[answered]),
    }


def probe(requests: list[bytes], port: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """A light closed loop: when each request was sent (s) and its latency (ms)."""
    rows = run_closed_loop(HOST, port, requests, PROBE_CONNECTIONS, seconds).arrays()
    answered = rows["status"] > 0
    return rows["sent"][answered], (rows["done"] - rows["sent"])[answered] * 1e3


def windows_p99(sent: np.ndarray, latency: np.ndarray, seconds: float) -> list[float]:
    """p99 (ms) in consecutive windows of WINDOW_S, for the record."""
    windows = []
    for start in np.arange(0.0, seconds, WINDOW_S):
        inside = (sent >= start) & (sent < start + WINDOW_S)
        windows.append(float(np.percentile(latency[inside], 99)) if inside.any() else np.inf)
    return windows


def recovered_after(
    sent: np.ndarray, latency: np.ndarray, seconds: float, limit_ms: float
) -> float | None:
    """The first window boundary from which the p99 of every request sent after it is
    within `limit_ms`, or None if there is none. Over the whole rest of the probe, not per
    window: one noisy quarter-second on a shared machine is not a server still recovering."""
    for start in np.arange(0.0, seconds, WINDOW_S):
        after = latency[sent >= start]
        if len(after) and float(np.percentile(after, 99)) <= limit_ms:
            return float(start)
    return None


def check(summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    failures = []
    capacity = summary["capacity_per_s"]
    for size, storm in summary["storms"].items():
        for tool in ("wrk", "open_loop"):
            figures = storm[tool]
            timeouts = (
                figures["socket_errors"]["timeout"] if tool == "wrk" else figures["no_answer"]
            )
            p99 = figures["p99_ms"] if tool == "wrk" else figures["server"].get("p99_ms", np.inf)
            slowest = figures["max_ms"] if tool == "wrk" else figures["server"].get("max_ms")
            if timeouts:
                failures.append(f"{size} connections, {tool}: {timeouts} socket timeouts")
            if p99 > args.p99_ms:
                failures.append(f"{size} connections, {tool}: p99 {p99} ms > {args.p99_ms}")
            if slowest is None or slowest > args.max_ms:
                failures.append(f"{size} connections, {tool}: slowest {slowest} ms > {args.max_ms}")
            if figures["ok_per_s"] < args.ok_share * capacity:
                failures.append(
                    f"{size} connections, {tool}: {figures['ok_per_s']} 200s/s"
                    f" < {args.ok_share} x capacity {capacity}"
                )
        after = storm["recovered_after_s"]
        if after is None or after > args.recovery_s:
            failures.append(
                f"{size} connections: p99 not back to normal within {args.recovery_s} s"
            )
    return failures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="256,1024,4096")
    parser.add_argument("--storm-s", type=int, default=10)
    parser.add_argument("--capacity-s", type=int, default=5)
    parser.add_argument("--probe-s", type=float, default=4.0)
    parser.add_argument("--open-factor", type=float, default=2.0)
    parser.add_argument("--wrk-timeout-s", type=int, default=5)
    parser.add_argument("--p99-ms", type=float, default=250.0)
    parser.add_argument("--max-ms", type=float, default=1000.0)
    parser.add_argument("--ok-share", type=float, default=0.7)
    parser.add_argument("--recovery-s", type=float, default=2.0)
    # The probe's p99 is back to normal once within max(tolerance x, + slack) of before.
    parser.add_argument("--normal-tolerance", type=float, default=2.0)
    parser.add_argument("--normal-slack-ms", type=float, default=5.0)
    parser.add_argument("--backlog", type=int, help="uvicorn --backlog, in place of the shipped 32")
    parser.add_argument("--env", action="append", default=[], help="extra FRAUD_X=value")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(n) for n in args.connections.split(",")]
    limit = raise_file_limit(3 * max(sizes) + 1024)
    model_dir = shipped_model_dir()
    env = model_env(model_dir) | {"FRAUD_API_KEYS": API_KEY}
    env |= dict(item.split("=", 1) for item in args.env)
    extra = ("--backlog", str(args.backlog)) if args.backlog else ()
    python = SERVE_PYTHON if SERVE_PYTHON.exists() else None
    flags = [*UVICORN_FLAGS, *extra]
    summary: dict[str, Any] = {"settings": args.env, "uvicorn_flags": flags, "file_limit": limit}
    with (
        tempfile.TemporaryDirectory() as tmp,
        uvicorn_server("server.app:create_app", env, python=python, extra_args=extra) as server,
    ):
        bodies = Path(tmp) / "bodies.jsonl"
        bodies.write_bytes(b"\n".join(transaction_bodies(model_dir)) + b"\n")
        requests = score_requests(model_dir, server.port, API_KEY)
        capacity = wrk(server.port, 32, args.capacity_s, bodies, args.wrk_timeout_s)
        summary["capacity_per_s"] = capacity["ok_per_s"]
        summary["capacity_wrk"] = capacity
        normal = float(np.percentile(probe(requests, server.port, args.probe_s)[1], 99))
        limit_ms = max(args.normal_tolerance * normal, normal + args.normal_slack_ms)
        summary["normal_probe_p99_ms"] = round(normal, 2)
        summary["storms"] = {}
        for size in sizes:
            storm: dict[str, Any] = {
                "wrk": wrk(server.port, size, args.storm_s, bodies, args.wrk_timeout_s)
            }
            sent, latency = probe(requests, server.port, args.probe_s)
            windows = windows_p99(sent, latency, args.probe_s)
            storm["recovery_windows_p99_ms"] = [round(w, 2) for w in windows]
            storm["recovered_after_s"] = recovered_after(sent, latency, args.probe_s, limit_ms)
            storm["closed_loop"] = per_connection(requests, server.port, size, args.storm_s)
            rate = args.open_factor * summary["capacity_per_s"]
            storm["open_loop"] = open_loop(requests, server.port, size, rate, args.storm_s)
            summary["storms"][str(size)] = storm
            print(f"{size} connections: {storm}", file=sys.stderr, flush=True)
        log = server.log_text()
    failures = check(summary, args)
    if "Traceback" in log:
        failures.append("the server logged a traceback")
    summary["failures"] = failures
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(run(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
