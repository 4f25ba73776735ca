"""The named scoring route against /v1/score, on one server serving both shipped models.

    make bench-routes
    .venv/bin/python -m benchmarks.routes --rounds 10 --duration 3

make bench starts a fresh uvicorn per target, and on this shared machine two processes of the
same server differ by up to a third in requests/s from one start to the next. The two routes
run the same code on the same model, so here they share one process: wrk alternates between
/v1/score and /v1/models/creditcard/score, every other round in the other order, and the
median of each route's rounds is compared. Writes benchmarks/results/routes.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.serving import ROOT, SERVE_PYTHON, SERVER_FACTORY, uvicorn_server
from benchmarks.wrk import run_wrk

DEFAULT_ROUTE = "/v1/score"
NAMED_ROUTE = "/v1/models/creditcard/score"
GOAL_AT_32 = 0.95  # the named route's share of /v1/score's requests/s at 32 connections


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routes", description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/routes.json")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    return args


def bodies_file(folder: Path) -> Path:
    """The shipped credit-card samples as /v1 bodies, one a line, for benchmarks/wrk_post.lua."""
    rows = json.loads((ROOT / "models/creditcard/4/samples.json").read_text())["rows"]
    path = folder / "bodies.jsonl"
    lines = [
        json.dumps({"transaction_id": f"b-{i}", "features": r["features"]})
        for i, r in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: it is Debian's package `wrk` (apt-get install -y wrk)")
    key = secrets.token_urlsafe(24)
    env = {
        "FRAUD_MODEL_REPOSITORY": str(ROOT / "models"),
        "FRAUD_DEFAULT_MODEL": "creditcard",
        "FRAUD_API_KEYS": key,
        "FRAUD_POLL_INTERVAL_S": "0",
    }
    python = SERVE_PYTHON if SERVE_PYTHON.exists() else None
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {
        c: {DEFAULT_ROUTE: [], NAMED_ROUTE: []} for c in args.concurrency
    }
    with (
        tempfile.TemporaryDirectory(prefix="routes-") as tmp,
        uvicorn_server(SERVER_FACTORY, env, python=python) as server,
    ):
        bodies = bodies_file(Path(tmp))
        for c in args.concurrency:
            run_wrk(server.port, DEFAULT_ROUTE, c, 2, bodies, key)  # warm-up
            for number in range(args.rounds):
                order = [DEFAULT_ROUTE, NAMED_ROUTE]
                for route in order if number % 2 == 0 else order[::-1]:
                    result = run_wrk(server.port, route, c, args.duration, bodies, key)
                    if result["errors"]:
                        sys.exit(f"{route} at c={c}: {result['errors']} errors")
                    runs[c][route].append(result)
    summary: dict[str, Any] = {}
    print(f"{'c':>3} {'route':<30} {'median rps':>11} {'p99 ms':>8}")
    for c, by_route in runs.items():
        medians = {}
        for route, results in by_route.items():
            medians[route] = statistics.median(r["rps"] for r in results)
            p99 = statistics.median(r["p99_ms"] for r in results)
            print(f"{c:>3} {route:<30} {medians[route]:>11.1f} {p99:>8.2f}")
        ratio = medians[NAMED_ROUTE] / medians[DEFAULT_ROUTE]
        # Each round's pair ran back to back: their ratios show the spread.
        pairs = [
            n["rps"] / d["rps"]
            for n, d in zip(by_route[NAMED_ROUTE], by_route[DEFAULT_ROUTE], strict=True)
        ]
        print(
            f"{c:>3} named / default: {ratio:.3f} (per round {min(pairs):.3f} to {max(pairs):.3f})"
        )
        summary[str(c)] = {
            "median_rps": medians,
            "ratio": ratio,
            "round_ratios": pairs,
            "runs": by_route,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    at_32 = summary.get("32", {}).get("ratio")
    if at_32 is not None:
        verdict = "met" if at_32 >= GOAL_AT_32 else "MISSED"
        print(f"goal: named / default >= {GOAL_AT_32} at c=32: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
