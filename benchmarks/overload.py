"""Overload: offer about three times what the server can answer, then see it recover.

Against a real uvicorn serving the shipped model on loopback:
1. capacity: 200s per second from 32 connections with no pause (closed loop, 5 s);
2. normal: open-loop at `--normal-share` of that (half; the reference p99);
3. overload: open-loop at `--factor` x capacity for `--overload-s` seconds;
4. recovery: the normal rate again.

The rows are the model card's samples, a quarter of them frauds: each one declined is also
explained, one more model run of F + 1 rows, so this mix costs the server about twice what
the real one (1 in 647 not approved) does.

Callers reach the server through a pool of `--connections` keep-alive connections, one request
in flight on each, as a payment platform's client does; a request that waits longer than
`--client-timeout-s` for a free connection is given up by the caller and never reaches the
server (counted as abandoned). Latency is reported from when a request was sent (what the
server takes) and from when it was due (what the caller waits, its pool's queue included).

Prints the figures and writes them as JSON; exits 1 when a check fails: an answer other than
2xx, 503 or 429, a request with no answer, p99 (from sending) of accepted requests during the
overload over the server's own bound (its request deadline plus `--batch-slack-ms` for the
batch a request made; without deadlines, `--p99-factor` x the normal phase's or `--queue-factor`
x the mean that Little's law gives for a full pool, connections / answer rate), or p99 (from
sending and from
due) of the requests due `--recovery-s` after the overload or later over `--normal-tolerance` x
normal (at least normal + `--normal-slack-ms`).

    .venv/bin/python -m benchmarks.overload --overload-s 20
    .venv/bin/python -m benchmarks.overload --connections 256 --env FRAUD_MAX_QUEUE=32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import (
    TRANSPORT_ERROR,
    Phase,
    Results,
    capacity,
    report,
    run_load,
    score_requests,
)
from benchmarks.serving import SERVE_PYTHON, model_env, shipped_model_dir, uvicorn_server

API_KEY = "overload-key"
ACCEPTED = (200,)
# The server's FRAUD_REQUEST_DEADLINE_MS default (server/settings.py): the benchmark does not
# import the server.
DEFAULT_DEADLINE_MS = 100.0
SHED = (503, 429)


def p99_ms(latencies: np.ndarray) -> float:
    return float(np.percentile(latencies, 99) * 1e3) if len(latencies) else float("nan")


def summarise(results: Results, recovery_s: float) -> dict[str, Any]:
    rows = results.arrays()
    waited = rows["done"] - rows["due"]
    served = rows["done"] - rows["sent"]
    bounds = results.phase_bounds()
    summary: dict[str, Any] = {
        "connections_opened": results.connections_opened,
        "generator_lag_p99_ms": float(np.percentile(results.tick_lateness, 99) * 1e3),
        "phases": {},
    }
    abandoned = np.array(results.abandoned_at)
    for name, (start, end) in bounds.items():
        in_phase = (rows["due"] >= start) & (rows["due"] < end)
        status = rows["status"][in_phase]
        ok = in_phase & np.isin(rows["status"], ACCEPTED)
        summary["phases"][name] = {
            "due": int(in_phase.sum() + ((abandoned >= start) & (abandoned < end)).sum()),
            "sent": int(in_phase.sum()),
            "abandoned": int(((abandoned >= start) & (abandoned < end)).sum()),
            "statuses": {str(s): int((status == s).sum()) for s in np.unique(status)},
            "p50_ms": float(np.median(waited[ok]) * 1e3) if ok.any() else float("nan"),
            "p99_ms": p99_ms(waited[ok]),
            "p99_server_ms": p99_ms(served[ok]),
            "answered_per_s": float(in_phase.sum() / (end - start)),
            "accepted_per_s": float(ok.sum() / (end - start)),
        }
    if "recovery" in bounds:
        start, end = bounds["recovery"]
        by_second: dict[str, list[float]] = {"server": [], "caller": []}
        for second in range(int(end - start)):
            lo, hi = start + second, start + second + 1
            ok = (rows["due"] >= lo) & (rows["due"] < hi) & np.isin(rows["status"], ACCEPTED)
            by_second["server"].append(p99_ms(served[ok]))
            by_second["caller"].append(p99_ms(waited[ok]))
        summary["recovery_p99_ms_by_second"] = by_second
        ok = (rows["due"] >= start + recovery_s) & np.isin(rows["status"], ACCEPTED)
        summary["recovered_p99_server_ms"] = p99_ms(served[ok])
        summary["recovered_p99_ms"] = p99_ms(waited[ok])
    return summary


def pool_bound_ms(summary: dict[str, Any], args: argparse.Namespace) -> float:
    """Little's bound: at saturation every pooled connection has a request in the server, so
    the mean time from sending is connections / answer rate, however fast the server is at
    half load; `--queue-factor` times that, or `--p99-factor` times the normal p99 if more."""
    phases = summary["phases"]
    normal = phases["normal"]["p99_server_ms"]
    in_hand_ms = summary["connections"] / phases["overload"]["answered_per_s"] * 1e3
    return max(args.p99_factor * normal, args.queue_factor * in_hand_ms)


def overload_limit_ms(summary: dict[str, Any], args: argparse.Namespace) -> float:
    """How slow an accepted answer may be while the server is saturated: with request
    deadlines on, the server's own bound, the deadline plus `--batch-slack-ms` (a request that
    made its batch is answered however late the batch ends; one still waiting at its deadline
    gets a 503); without them, Little's bound. Either shows the queue stayed bounded: one that
    grew would give seconds. Little's bound is reported beside it, but with deadlines it is
    not the check: on a slow moment of the shared machine, explaining a quarter of the rows,
    one run's p99 was 79 ms against a bound of 65 ms, every answer a 200."""
    deadline = deadline_ms(args)
    if deadline > 0:
        return deadline + args.batch_slack_ms
    return pool_bound_ms(summary, args)


def deadline_ms(args: argparse.Namespace) -> float:
    """The server's request deadline in this run: its default unless --env sets it."""
    settings = dict(item.split("=", 1) for item in args.env)
    return float(settings.get("FRAUD_REQUEST_DEADLINE_MS", DEFAULT_DEADLINE_MS))


def check(summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    failures = []
    phases = summary["phases"]
    allowed = {str(s) for s in (*ACCEPTED, *SHED)}
    for name, phase in phases.items():
        bad = {s: n for s, n in phase["statuses"].items() if s not in allowed}
        if bad:
            failures.append(f"{name}: answers other than 200/503/429: {bad}")
        errors = phase["statuses"].get(str(TRANSPORT_ERROR), 0)
        if errors:
            failures.append(f"{name}: {errors} requests failed without an answer")
    normal = phases["normal"]["p99_server_ms"]
    overload = phases["overload"]["p99_server_ms"]
    limit = overload_limit_ms(summary, args)
    if not overload <= limit:
        failures.append(
            f"overload p99 {overload:.2f} ms > {limit:.2f} ms (normal {normal:.2f} ms, "
            f"{summary['connections']} connections at "
            f"{phases['overload']['answered_per_s']:.0f}/s)"
        )
    # A floor of a few milliseconds, so that one scheduler hiccup on a busy machine is not
    # taken for a server that did not recover.
    limit = max(args.normal_tolerance * normal, normal + args.normal_slack_ms)
    for latency in ("recovered_p99_server_ms", "recovered_p99_ms"):
        if not summary[latency] <= limit:
            failures.append(
                f"{latency} {summary[latency]:.2f} ms > {limit:.2f} ms, from "
                f"{args.recovery_s:.0f} s after the overload"
            )
    return failures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--overload-s", type=float, default=20.0)
    parser.add_argument("--normal-s", type=float, default=5.0)
    parser.add_argument("--recovery-total-s", type=float, default=8.0)
    parser.add_argument("--recovery-s", type=float, default=2.0)
    parser.add_argument("--p99-factor", type=float, default=5.0)
    # A saturated server answers its pool in bursts (a batch at a time) and the shared machine
    # stalls: one CI run, every answer a 200, had p99 4.3 x the mean. A queue that grew would
    # give seconds, and the request deadline (100 ms) caps it anyway.
    parser.add_argument("--queue-factor", type=float, default=5.0)
    # The batch a request made and the loop's turns that write its answer: a few ms here,
    # tens of them when the shared machine stalls.
    parser.add_argument("--batch-slack-ms", type=float, default=50.0)
    parser.add_argument("--normal-share", type=float, default=0.5)
    parser.add_argument("--normal-tolerance", type=float, default=2.0)
    parser.add_argument("--normal-slack-ms", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--client-timeout-s", type=float, default=0.5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--env", action="append", default=[], help="extra FRAUD_X=value")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The run's figures, with "failures" listing every check that did not hold."""
    model_dir = shipped_model_dir()
    env = model_env(model_dir) | {"FRAUD_API_KEYS": API_KEY}
    env |= dict(item.split("=", 1) for item in args.env)
    python = SERVE_PYTHON if SERVE_PYTHON.exists() else None
    with uvicorn_server("server.app:create_app", env, python=python) as server:
        requests = score_requests(model_dir, server.port, API_KEY)
        rate = capacity("127.0.0.1", server.port, requests)
        phases = [
            # Opens the pool's connections and warms the server; not counted.
            Phase("warm-up", rate * args.normal_share, 2.0),
            Phase("normal", rate * args.normal_share, args.normal_s),
            Phase("overload", rate * args.factor, args.overload_s),
            Phase("recovery", rate * args.normal_share, args.recovery_total_s),
        ]
        results = run_load(
            "127.0.0.1",
            server.port,
            requests,
            phases,
            max_connections=args.connections,
            client_timeout_s=args.client_timeout_s,
        )
        server_log = server.log_text()
    summary = {
        "capacity_per_s": rate,
        "factor": args.factor,
        "connections": args.connections,
        "normal_share": args.normal_share,
        "settings": args.env,
    } | summarise(results, args.recovery_s)
    failures = check(summary, args)
    if "Traceback" in server_log:
        failures.append("the server logged a traceback")
    summary["overload_limit_ms"] = overload_limit_ms(summary, args)
    summary["pool_bound_ms"] = pool_bound_ms(summary, args)
    summary["failures"] = failures
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(run(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
