"""Single-request latency of POST /v1/score against a real uvicorn server on loopback.

Starts the server as `make serve` does (uvicorn, uvloop, the server's httptools protocol) on a
free port, then sends requests one at a time over one keep-alive connection (concurrency 1),
timing each from send to the last byte of the response. The same run times direct single-row
onnxruntime calls on the same model, so HTTP overhead is a ratio of figures taken together.
Bodies are 256 rows drawn, with a fixed seed, from normal distributions with the training
mean and std in the model's ONNX metadata. Exits 1 if any answer is not 200 or its
probability differs from the direct call's. Needs only the stdlib, numpy and onnxruntime.

    make bench-latency      # runs .venv-serve/bin/python -m benchmarks.latency
    .venv-serve/bin/python -m benchmarks.latency --requests 3000 --json latency.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.serving import ROOT, model_env, uvicorn_server
from server.scorer import session_options

DISTINCT_BODIES = 256
READY_TIMEOUT_S = 30.0
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/creditcard/4"))
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--ort-calls", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    return parser.parse_args()


def load_session(path: Path) -> ort.InferenceSession:
    """A session configured exactly as the server configures its own."""
    return ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])


def make_rows(meta: dict[str, str], seed: int) -> np.ndarray:
    mean = np.asarray(json.loads(meta["feature_mean"]))
    std = np.asarray(json.loads(meta["feature_std"]))
    return np.random.default_rng(seed).normal(mean, std, size=(DISTINCT_BODIES, len(mean)))


def time_ort(
    session: ort.InferenceSession, meta: dict[str, str], rows: np.ndarray, calls: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nanoseconds per direct single-row session.run, and each row's probability."""
    feeds = [{meta["input_name"]: row[None, :]} for row in rows.astype(np.float32)]
    outputs = [meta["output_name"]]
    expected = np.array([session.run(outputs, feed)[0].item() for feed in feeds])
    times = np.empty(calls, dtype=np.int64)
    for i in range(calls):
        feed = feeds[i % len(feeds)]
        start = time.perf_counter_ns()
        session.run(outputs, feed)
        times[i] = time.perf_counter_ns() - start
    return times, expected


def time_http(
    conn: http.client.HTTPConnection,
    headers: dict[str, str],
    bodies: list[bytes],
    count: int,
    deadline: float,
) -> tuple[np.ndarray, list[bytes | int]]:
    """Nanoseconds per request, and each answer: its body if 200, else its status."""
    times = np.empty(count, dtype=np.int64)
    answers: list[bytes | int] = []
    for i in range(count):
        if time.perf_counter() > deadline:
            return times[:i], answers
        body = bodies[i % len(bodies)]
        start = time.perf_counter_ns()
        conn.request("POST", "/v1/score", body, headers)
        response = conn.getresponse()
        data = response.read()
        times[i] = time.perf_counter_ns() - start
        answers.append(data if response.status == 200 else response.status)
    return times, answers


def count_failures(answers: list[bytes | int], expected: np.ndarray) -> int:
    """Non-200 answers, and 200 answers whose probability is not the direct ORT one."""
    results = [json.loads(a) for a in answers if isinstance(a, bytes)]
    rows = [int(r["transaction_id"].removeprefix("bench-")) for r in results]
    got = np.array([r["fraud_probability"] for r in results])
    wrong = np.count_nonzero(np.abs(got - expected[rows]) > 1e-5)
    return len(answers) - len(results) + int(wrong)


def summarize(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1000.0
    stats = {name: float(np.percentile(us, q)) for name, q in PERCENTILES.items()}
    return stats | {"max": float(us.max()), "mean": float(us.mean())}


def print_table(r: dict[str, Any]) -> None:
    if r["requests"] < r["requests_asked"]:
        print(f"time limit hit: {r['requests']} of {r['requests_asked']} requests done")
    print(f"{'':<8}{'HTTP (us)':>12}{'ORT (us)':>12}")
    for name, value in r["http_us"].items():
        print(f"{name:<8}{value:>12.1f}{r['ort_direct_us'][name]:>12.1f}")
    print(f"requests: {r['requests']} after {r['warmup']} warm-up, concurrency 1, keep-alive")
    print(f"direct ORT: {r['ort_calls']} single-row calls in this process")
    print(f"failures: {r['failures']}")
    print(f"throughput: {r['throughput_rps']:.1f} requests/s")
    print(f"HTTP p50 / ORT p50: {r['http_p50_over_ort_p50']:.1f}x")
    print(f"model: {r['model_file']} ({r['model_bytes']} bytes)")


def main() -> int:
    args = parse_args()
    model_dir = args.model_dir if args.model_dir.is_absolute() else ROOT / args.model_dir
    manifest = json.loads((model_dir / "manifest.json").read_text())
    path = model_dir / manifest.get("file", "model.onnx")
    session = load_session(path)
    meta = session.get_modelmeta().custom_metadata_map
    rows = make_rows(meta, args.seed)
    bodies = [
        json.dumps({"transaction_id": f"bench-{i}", "features": row.tolist()}).encode()
        for i, row in enumerate(rows)
    ]
    ort_ns, expected = time_ort(session, meta, rows, args.ort_calls)

    key = secrets.token_urlsafe(24)
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    env = model_env(model_dir) | {"FRAUD_API_KEYS": key}
    with uvicorn_server("server.app:create_app", env, timeout_s=READY_TIMEOUT_S) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        deadline = time.perf_counter() + args.max_seconds
        _, warm = time_http(conn, headers, bodies, args.warmup, deadline)
        started = time.perf_counter()
        http_ns, answers = time_http(conn, headers, bodies, args.requests, deadline)
        elapsed = time.perf_counter() - started
        conn.close()
        server_log = server.log_text()

    if not len(http_ns):
        sys.exit(f"time limit hit in warm-up, after {len(warm)} of {args.warmup} requests")
    results: dict[str, Any] = {
        "requests": len(http_ns),
        "requests_asked": args.requests,
        "warmup": len(warm),
        "failures": count_failures(warm + answers, expected),
        "throughput_rps": len(http_ns) / elapsed,
        "http_us": summarize(http_ns),
        "ort_direct_us": summarize(ort_ns),
        "ort_calls": len(ort_ns),
        "model_file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "model_bytes": path.stat().st_size,
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "seed": args.seed,
    }
    results["http_p50_over_ort_p50"] = results["http_us"]["p50"] / results["ort_direct_us"]["p50"]
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, sort_keys=True, indent=2) + "\n")
    if results["failures"] or "Traceback" in server_log or "ERROR" in server_log:
        print(f"\nserver log:\n{server_log}", file=sys.stderr)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
