"""Soak: hours of traffic in minutes, watching memory, errors and the log.

Against a real uvicorn serving the shipped model on loopback, with the access log on:
1. capacity: 200s per second from 32 connections with no pause (closed loop, 5 s);
2. `--duration-s` of open-loop traffic at `--load` x capacity. One request in 50 is bad on
   purpose (a wrong key, broken JSON, a missing feature) and must get its own 4xx;
3. the server's resident memory (VmRSS) is read every second.

Fails (exit 1) on any answer other than the expected one, a request with no answer, memory at
the end more than `--max-growth` over what it was once warm (after `--warm-s`), a traceback in
the log, or the log holding an API key or a feature value of any request. A stall of a shared
machine can happen at any load: the server then sheds what it cannot answer within its deadline
(a 503) and the generator gives up on what waited a second for a connection ("abandoned").
Together they may be up to `--max-shed` of the requests; any more fails.

    make soak                                       # 10 minutes
    .venv/bin/python -m benchmarks.soak --duration-s 60
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import (
    TRANSPORT_ERROR,
    Phase,
    capacity,
    post_request,
    report,
    run_load,
    transaction_bodies,
)
from benchmarks.serving import SERVE_PYTHON, model_env, shipped_model_dir, uvicorn_server

API_KEY = "soak-key-7f3a9c"
WRONG_KEY = "soak-wrong-key-51d2e8"
BAD_EVERY = 50
# Planted in requests, good and bad: values no log line could hold by chance.
SENTINEL_AMOUNT = 4817.2963
SENTINEL_TEXT = "sentinel-7c91f2"


def requests_with_expectations(
    model_dir: Path, port: int
) -> tuple[list[bytes], list[int], tuple[list[str], list[str]]]:
    """Request bytes, the status each must get, and what the log must never hold: strings,
    and feature values as the client wrote them."""
    bodies = transaction_bodies(model_dir)
    secrets = [API_KEY, WRONG_KEY, SENTINEL_TEXT, "4817.29", "4817,29"]
    values = [repr(SENTINEL_AMOUNT)]
    for i, body in enumerate(bodies):
        features = json.loads(body)["features"]
        values += [repr(v) for v in features.values() if abs(v) > 1e-3 and len(repr(v)) >= 8]
        if i % 8 == 0:
            bodies[i] = json.dumps({"features": features | {"Amount": SENTINEL_AMOUNT}}).encode()

    def post(body: bytes | str, key: str = API_KEY) -> bytes:
        data = body if isinstance(body, bytes) else body.encode()
        return post_request("127.0.0.1", port, "/v1/score", data, key)

    first = json.loads(bodies[0])["features"]
    missing = dict(list(first.items())[1:])
    text = first | {"Amount": SENTINEL_TEXT}
    bad = [
        (post(bodies[0], WRONG_KEY), 403),
        (post(bodies[2][:-7]), 400),
        (post(json.dumps({"features": missing})), 422),
        (post(json.dumps({"features": text})), 422),
    ]
    requests, expected = [], []
    for i, body in enumerate(bodies * 3):
        if i % BAD_EVERY == BAD_EVERY - 1:
            request, status = bad[(i // BAD_EVERY) % len(bad)]
            requests.append(request)
            expected.append(status)
        requests.append(post_request("127.0.0.1", port, "/v1/score", body, API_KEY))
        expected.append(200)
    return requests, expected, (secrets, values)


def leaks(log: str, secrets: list[str], values: list[str]) -> list[str]:
    """The secrets (searched as substrings) and feature values (as whole tokens) in the log.
    The log's tokens go into a set once: a substring search per value through ten minutes
    of access log would take minutes."""
    tokens = set(re.findall(r'[^\s",:{}\[\]=]+', log))
    return [s for s in secrets if s in log] + [v for v in values if v in tokens]


class MemorySampler(threading.Thread):
    """VmRSS of one process, once a second, as (seconds since start, bytes)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()
        self.start_time = time.perf_counter()

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            self.samples.append((time.perf_counter() - self.start_time, self.rss()))


def growth(samples: list[tuple[float, int]], warm_s: float, rate: float) -> dict[str, float]:
    """End against warm, and the trend after warm-up: a slow leak shows in the slope
    (bytes per request) before it shows in two samples."""
    times = np.array([t for t, _ in samples])
    rss = np.array([r for _, r in samples], dtype=np.float64)
    after = times >= warm_s
    warm = float(rss[after][0])
    end = float(rss[-1])
    slope = float(np.polyfit(times[after], rss[after], 1)[0]) if after.sum() > 2 else 0.0
    return {
        "rss_warm_mb": warm / 2**20,
        "rss_end_mb": end / 2**20,
        "rss_max_mb": float(rss.max()) / 2**20,
        "growth": (end - warm) / warm,
        "rss_trend_bytes_per_request": slope / rate,
        "rss_trend_growth_per_hour": slope * 3600 / warm,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--load", type=float, default=0.7, help="share of capacity")
    parser.add_argument("--warm-s", type=float, default=10.0)
    parser.add_argument("--max-growth", type=float, default=0.10)
    parser.add_argument("--max-shed", type=float, default=0.01, help="share of requests")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The run's figures, with "failures" listing every check that did not hold."""
    python = SERVE_PYTHON if SERVE_PYTHON.exists() else None
    model_dir = shipped_model_dir()
    env = model_env(model_dir) | {"FRAUD_API_KEYS": API_KEY, "FRAUD_ACCESS_LOG": "true"}
    with uvicorn_server("server.app:create_app", env, python=python) as server:
        requests, expected, secrets = requests_with_expectations(model_dir, server.port)
        good = [r for r, e in zip(requests, expected, strict=True) if e == 200]
        rate = capacity("127.0.0.1", server.port, good)
        sampler = MemorySampler(server.process.pid)
        sampler.start()
        results = run_load(
            "127.0.0.1",
            server.port,
            requests,
            [Phase("soak", rate * args.load, args.duration_s)],
            max_connections=args.connections,
        )
        sampler.stopped.set()
        sampler.join()
        log = server.log_text()
    rows = results.arrays()
    wanted = np.array(expected)[rows["payload"]]
    shed = (rows["status"] == 503) & (wanted == 200)
    served = rows["done"] - rows["sent"]
    ok = rows["status"] == 200
    summary: dict[str, Any] = {
        "capacity_per_s": rate,
        "rate_per_s": rate * args.load,
        "duration_s": args.duration_s,
        "requests": len(rows["status"]),
        "bad_requests": int((wanted != 200).sum()),
        "shed": int(shed.sum()),
        "unexpected": int(((rows["status"] != wanted) & ~shed).sum()),
        "no_answer": int((rows["status"] == TRANSPORT_ERROR).sum()),
        "abandoned": len(results.abandoned_at),
        "p50_ms": float(np.median(served[ok]) * 1e3),
        "p99_ms": float(np.percentile(served[ok], 99) * 1e3),
        "log_lines": log.count("\n"),
        "generator_lag_p99_ms": float(np.percentile(results.tick_lateness, 99) * 1e3),
    } | growth(sampler.samples, args.warm_s, rate * args.load)
    failures = []
    if summary["shed"] + summary["abandoned"] > args.max_shed * summary["requests"]:
        failures.append(
            f"{summary['shed']} requests shed and {summary['abandoned']} never sent "
            f"(limit {args.max_shed:.1%} of the requests)"
        )
    if summary["unexpected"]:
        wrong = (rows["status"] != wanted) & ~shed
        statuses = dict(
            zip(
                *np.unique(rows["status"][wrong], return_counts=True),
                strict=True,
            )
        )
        failures.append(f"{summary['unexpected']} unexpected answers {statuses}")
    if not summary["growth"] < args.max_growth:
        failures.append(f"memory grew {summary['growth']:.1%} (limit {args.max_growth:.0%})")
    if "Traceback" in log:
        failures.append("the server logged a traceback")
    leaked = leaks(log, *secrets)
    if leaked:
        failures.append(f"the log holds a key or feature value: {leaked[:5]}")
    summary["failures"] = failures
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(run(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
