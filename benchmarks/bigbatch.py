"""Do large batches hold the loop? Single-request latency beside a 1,000-row batch.

    python -m benchmarks.bigbatch [--duration 8] [--rounds 3]

wrk sends single transactions to /v1/score over 8 connections while another connection posts
a /v1/score/batch of 1,000 rows every 100 ms. Three cases, each in a server of its own, rounds
alternating: no batches (the reference), batches with the default FRAUD_MAX_BATCH=64 (the
batch goes through the model in chunks of 64, one loop turn each), and batches with
FRAUD_MAX_BATCH=1000 (the batch runs whole, in one model call). Prints the singles' p50 and
p99 and the batches' own latency; the median round per case is kept.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.serving import (
    ROOT,
    SERVE_PYTHON,
    SERVER_FACTORY,
    model_env,
    shipped_model_dir,
    uvicorn_server,
)
from benchmarks.wrk import run_wrk

KEY = "bench-key"
BATCH_ROWS = 1000
BATCH_EVERY_S = 0.1
CASES = {
    "singles alone": (None, {}),
    "with batches, chunked by 64": (BATCH_ROWS, {"FRAUD_MAX_BATCH": "64"}),
    "with batches, run whole": (BATCH_ROWS, {"FRAUD_MAX_BATCH": str(BATCH_ROWS)}),
}


class BatchSender(threading.Thread):
    """Posts one batch every interval on its own keep-alive connection; bounded by `stop`."""

    def __init__(self, port: int, body: bytes) -> None:
        super().__init__(daemon=True)
        self.port, self.body = port, body
        self.stop = threading.Event()
        self.latencies_ms: list[float] = []
        self.failures = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Content-Type": "application/json", "X-API-Key": KEY}
        next_at = time.monotonic()
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                conn.request("POST", "/v1/score/batch", self.body, headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self.failures += 1
            except OSError:
                self.failures += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.latencies_ms.append((time.perf_counter() - started) * 1000)
            next_at += BATCH_EVERY_S
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        conn.close()


def run_case(
    rows: list[list[float]], batch_rows: int | None, settings: dict[str, str], args: Any
) -> dict[str, Any]:
    env = model_env(shipped_model_dir("creditcard")) | {"FRAUD_API_KEYS": KEY} | settings
    bodies = args.bodies
    with uvicorn_server(SERVER_FACTORY, env, python=SERVE_PYTHON) as server:
        run_wrk(server.port, "/v1/score", 8, 1, bodies, KEY)  # warm-up
        sender = None
        if batch_rows:
            batch = [{"features": rows[i % len(rows)]} for i in range(batch_rows)]
            sender = BatchSender(server.port, json.dumps({"transactions": batch}).encode())
            sender.start()
        try:
            result = run_wrk(server.port, "/v1/score", 8, args.duration, bodies, KEY)
        finally:
            if sender is not None:
                sender.stop.set()
                sender.join(timeout=15)
    if sender is not None and sender.latencies_ms:
        result["batches"] = len(sender.latencies_ms)
        result["batch_failures"] = sender.failures
        result["batch_p50_ms"] = statistics.median(sender.latencies_ms)
        result["batch_max_ms"] = max(sender.latencies_ms)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bigbatch.json")
    args = parser.parse_args(argv)
    samples = json.loads((shipped_model_dir("creditcard") / "samples.json").read_text())
    rows = [r["features"] for r in samples["rows"]]
    args.bodies = args.out.with_suffix(".bodies")
    args.bodies.write_text("".join(json.dumps({"features": r}) + "\n" for r in rows))
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    try:
        for number in range(args.rounds):
            order = list(CASES) if number % 2 == 0 else list(CASES)[::-1]
            for case in order:
                batch_rows, settings = CASES[case]
                runs[case].append(run_case(rows, batch_rows, settings, args))
                print(f"round {number + 1} {case}: p99 {runs[case][-1].get('p99_ms')} ms")
    finally:
        args.bodies.unlink(missing_ok=True)
    result: dict[str, Any] = {"duration_s": args.duration, "rounds": args.rounds, "cases": {}}
    print(f"\n{'case':<30}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch p50':>11}{'batch max':>11}")
    for case, case_runs in runs.items():
        median = sorted(case_runs, key=lambda r: r["p99_ms"])[(len(case_runs) - 1) // 2]
        result["cases"][case] = median | {"rounds_p99_ms": [r["p99_ms"] for r in case_runs]}
        batch = (
            f"{median['batch_p50_ms']:>11.1f}{median['batch_max_ms']:>11.1f}"
            if "batch_p50_ms" in median
            else f"{'-':>11}{'-':>11}"
        )
        print(
            f"{case:<30}{median['rps']:>9.0f}{median['p50_ms']:>9.2f}{median['p99_ms']:>9.2f}{batch}"
        )
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
