"""Does a dead or hung webhook receiver slow scoring? Single-request latency, three ways.

Runs the server three times on loopback with every transaction declined (both thresholds
0, so every request raises an alert): without alerts, with alerts to a receiver that
answers at once, and with alerts to a receiver that accepts each connection and never
answers (each delivery waits for its timeout). Each run sends the same requests one at a
time over one keep-alive connection, as benchmarks/latency.py does, and prints p50/p99
and the ratios to the run without alerts, with the alert counters from /metrics.

    .venv-serve/bin/python -m benchmarks.alerts --requests 3000
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.latency import load_session, make_rows, summarize, time_http
from benchmarks.serving import ROOT, free_port, model_env, uvicorn_server

READY_TIMEOUT_S = 30.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/creditcard/4"))
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    return parser.parse_args()


RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.serve_forever()
"""


@contextmanager
def answering_receiver() -> Iterator[str]:
    """A receiver answering 204 at once, in its own process so that it takes no time from
    the client that measures."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def hung_receiver() -> Iterator[str]:
    """Listens, and lets connections sit in its backlog unanswered."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        sock.close()


def run(env: dict[str, str], bodies: list[bytes], args: argparse.Namespace) -> dict[str, object]:
    key = env["FRAUD_API_KEYS"]
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    with uvicorn_server("server.app:create_app", env, timeout_s=READY_TIMEOUT_S) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        deadline = time.perf_counter() + args.max_seconds
        time_http(conn, headers, bodies, args.warmup, deadline)
        times, answers = time_http(conn, headers, bodies, args.requests, deadline)
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        conn.close()
    alerts = {
        line.split('result="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("fraud_alerts_total{")
    }
    declined = sum(
        1 for a in answers if isinstance(a, bytes) and json.loads(a)["decision"] == "DECLINE"
    )
    return {
        "latency_us": summarize(times),
        "requests": len(answers),
        "declined": declined,
        "alerts": alerts,
    }


def main() -> int:
    args = parse_args()
    model_dir = args.model_dir if args.model_dir.is_absolute() else ROOT / args.model_dir
    meta = load_session(model_dir / "model.onnx").get_modelmeta().custom_metadata_map
    rows = make_rows(meta, 0)
    bodies = [
        json.dumps({"transaction_id": f"bench-{i}", "features": row.tolist()}).encode()
        for i, row in enumerate(rows)
    ]
    base = model_env(model_dir) | {
        "FRAUD_API_KEYS": secrets.token_urlsafe(24),
        "FRAUD_REVIEW_THRESHOLD": "0",
        "FRAUD_DECLINE_THRESHOLD": "0",
    }
    results = {"no alerts": run(base, bodies, args)}
    with answering_receiver() as url:
        results["receiver answering"] = run(base | {"FRAUD_ALERT_URLS": url}, bodies, args)
    with hung_receiver() as url:
        env = base | {"FRAUD_ALERT_URLS": url, "FRAUD_ALERT_TIMEOUT_S": "30"}
        results["receiver hung"] = run(env, bodies, args)
    reference = results["no alerts"]["latency_us"]
    assert isinstance(reference, dict)
    print(f"{'':<20}{'p50 us':>9}{'p99 us':>9}{'p50 x':>7}{'p99 x':>7}  declined  alerts")
    failed = False
    for name, result in results.items():
        latency = result["latency_us"]
        assert isinstance(latency, dict)
        ratio50 = latency["p50"] / reference["p50"]
        ratio99 = latency["p99"] / reference["p99"]
        print(
            f"{name:<20}{latency['p50']:>9.1f}{latency['p99']:>9.1f}{ratio50:>7.2f}"
            f"{ratio99:>7.2f}  {result['declined']:>8}  {result['alerts']}"
        )
        failed |= result["declined"] != result["requests"]
    return 1 if failed or not np.isfinite(reference["p50"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
