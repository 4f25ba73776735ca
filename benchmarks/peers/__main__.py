"""This server beside the servers a user would otherwise pick, on the same shipped ONNX model.

Targets, one at a time on a free loopback port: floor (the bare Starlette endpoint of `make
bench`), server (server.app, POST /v1/score), and the peers MLServer, KServe, LitServe and
BentoML, each started from its own venv under .venv-peers/<peer>/ (built first if missing, from
benchmarks/peers/requirements-<peer>.txt) and asked in its own protocol. Every target gets the
rows of the newest creditcard model's samples.json, one body a row, cycled by wrk (one thread).
Before a target is measured one request is checked: the probability it returns must equal
onnxruntime's own for that row within 1e-5, or the target is reported and not measured.
Each round runs every target once, every other round in reverse order; each point keeps the
median run by requests/s. Prints a table and the server's ratios to each peer and to the floor
with their goals, and writes <out-dir>/peers.json and peers.png. Exits 1 if a target failed.

    make bench-peers
    .venv/bin/python -m benchmarks.peers --peers mlserver,litserve --rounds 1 --duration 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bench
from benchmarks.peers import bodies, goals, launch, runtime, venvs
from benchmarks.peers.plot import plot
from benchmarks.serving import (
    ROOT,
    Server,
    model_env,
    shipped_model_dir,
    uvicorn_server,
    wait_ready,
)
from benchmarks.summary import fmt
from benchmarks.wrk import WRK_THREADS, WRK_TIMEOUT_S, run_wrk

TOLERANCE = 1e-5
# `<peer>_unbatched`: a batching peer with its batching off (runtime.BATCHING_ENV), on request.
UNBATCHED = "_unbatched"
BATCHING_PEERS = ("mlserver", "litserve", "bentoml")
KNOWN = (*venvs.PEERS, *(p + UNBATCHED for p in BATCHING_PEERS))
READY_TIMEOUT_S = 120.0  # a peer's first start imports its framework from a cold disk
ROW = "{:<20}{:>5}{:>12}{:>10}{:>10}{:>8}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peers", default=",".join(venvs.PEERS), help=f"comma-separated, of {', '.join(KNOWN)}"
    )
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--duration", type=int, default=5, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--model-dir", type=Path, default=shipped_model_dir("creditcard"), help="newest by default"
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    if unknown := set(args.peers) - set(KNOWN):
        parser.error(f"unknown peers {sorted(unknown)}; known: {', '.join(KNOWN)}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    return args


def load_rows(model_dir: Path) -> tuple[list[list[float]], np.ndarray]:
    """The sample rows, and onnxruntime's probability for each, from the server's own session."""
    rows = [r["features"] for r in json.loads((model_dir / "samples.json").read_text())["rows"]]
    session = bench.load_session(model_dir / "model.onnx")
    expected = runtime.predict(session, np.asarray(rows, dtype=np.float32))[:, 0]
    return rows, expected


def ask(port: int, path: str, body: str, key: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", "X-API-Key": key}
        conn.request("POST", path, body.encode(), headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def check_answer(target: str, port: int, path: str, body: str, key: str, want: float) -> str | None:
    """None if the target answers the first row with onnxruntime's probability (the floor
    answers a constant: only its status counts)."""
    try:
        status, answer = ask(port, path, body, key)
    except OSError as exc:
        return f"POST {path} failed: {exc}"
    if status != 200:
        return f"POST {path} answered {status}: {answer[:300]!r}"
    if target == "floor":
        return None
    try:
        got = bodies.PROTOCOLS[peer_of(target)].probability(json.loads(answer))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return f"no probability in the answer ({exc!r}): {answer[:300]!r}"
    if not abs(got - want) <= TOLERANCE:
        return f"probability {got!r}, onnxruntime's is {want!r}: off by more than {TOLERANCE:g}"
    return None


def peer_of(target: str) -> str:
    return target.removesuffix(UNBATCHED)


def start(target: str, args: argparse.Namespace, env: dict[str, str], python: Path | None) -> Any:
    if target in ("floor", "server"):
        factory, _, overrides = bench.TARGETS[target]
        return uvicorn_server(factory, env | overrides, timeout_s=READY_TIMEOUT_S)
    assert python is not None
    model, name = args.model_dir / "model.onnx", args.model_dir.parent.name
    settings = {runtime.BATCHING_ENV: "off" if target.endswith(UNBATCHED) else "on"}
    return launch.peer_server(peer_of(target), python, model, name, READY_TIMEOUT_S, settings)


def bench_target(
    target: str,
    args: argparse.Namespace,
    env: dict[str, str],
    python: Path | None,
    files: dict[str, Path],
    key: str,
    want: float,
) -> tuple[dict[str, Any], str | None]:
    """The target's wrk run per concurrency, printed as they come, and why it stopped if so."""
    protocol = bodies.PROTOCOLS[peer_of(target)]
    name = args.model_dir.parent.name
    path, ready = protocol.route.format(model=name), protocol.ready.format(model=name)
    runs: dict[str, Any] = {}
    try:
        with start(target, args, env, python) as server:
            first = files[target].read_text().splitlines()[0]
            error = check_answer(target, server.port, path, first, key, want)
            for c in [] if error else args.concurrency:
                if args.warmup:
                    run_wrk(server.port, path, c, args.warmup, files[target], key)
                    settle(server, ready)
                runs[str(c)] = r = run_wrk(server.port, path, c, args.duration, files[target], key)
                p50, p99 = fmt(r.get("p50_ms")), fmt(r.get("p99_ms"))
                print(ROW.format(target, c, f"{r['rps']:.1f}", p50, p99, r["errors"]), flush=True)
                settle(server, ready)
            log = server.log_text()
    except RuntimeError as exc:  # not ready, exited, or wrk failed: the message carries the log
        error, log = str(exc).splitlines()[0], str(exc)
    if error:
        print(f"{target}: {error}; its log ends:\n{log[-2000:]}", flush=True)
    return runs, error


def settle(server: Server, ready: str) -> None:
    """Requests wrk abandoned must not pass their backlog on to the next run."""
    wait_ready(server, ready, READY_TIMEOUT_S)


def configuration(peers: list[str]) -> dict[str, Any]:
    """What each target ran, for the report."""
    described = {
        "onnxruntime": {
            "intra_op_num_threads": 1,
            "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
        },
        "batching": {"max_batch_size": runtime.MAX_BATCH_SIZE, "window_s": runtime.BATCH_WINDOW_S},
        "peers": {},
    }
    for target in peers:
        peer = peer_of(target)
        described["peers"][target] = {
            "version": venvs.pinned_version(peer),
            "route": bodies.PROTOCOLS[peer].route,
            "requirements": str(venvs.requirements(peer).relative_to(ROOT)),
            "batching": peer in BATCHING_PEERS and not target.endswith(UNBATCHED),
        }
    return described


def print_report(report: dict[str, Any]) -> None:
    print()
    print(ROW.format("target", "c", "requests/s", "p50 ms", "p99 ms", "errors"))
    for target, runs in report["results"].items():
        for c, r in runs.items():
            cells = (f"{r['rps']:.1f}", fmt(r.get("p50_ms")), fmt(r.get("p99_ms")), r["errors"])
            print(ROW.format(target, c, *cells))
    print()
    for row in report["ratios"]:
        print(goals.describe(row))
    judged = [row for row in report["ratios"] if row["met"] is not None]
    print(f"goals met: {sum(row['met'] for row in judged)} of {len(judged)} judged")
    for target, error in report["failures"].items():
        print(f"not measured, {target}: {error}")


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: it is Debian's package `wrk` (apt-get install -y wrk)")
    started, stamp = time.monotonic(), datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    failures: dict[str, str] = {}
    pythons: dict[str, Path] = {}
    for target in args.peers:
        try:
            pythons[target] = venvs.ensure(peer_of(target))
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            failures[target] = f"venv not built: {exc}"
            print(f"{target}: {failures[target]}", flush=True)
    targets = ["floor", "server", *pythons]
    rows, expected = load_rows(args.model_dir)
    key = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    env |= model_env(args.model_dir) | {"FRAUD_API_KEYS": key, "PYTHONPATH": str(ROOT)}
    print(f"{len(rows)} rows of {args.model_dir.relative_to(ROOT)}; {args.rounds} rounds of")
    print(f"{args.warmup} s warm-up, then {args.duration} s measured, per target and concurrency")
    print(ROW.format("target", "c", "requests/s", "p50 ms", "p99 ms", "errors"), flush=True)
    rounds: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        files = {
            t: bodies.write_bodies(bodies.PROTOCOLS[peer_of(t)], rows, Path(tmp) / f"{t}.jsonl")
            for t in targets
        }
        for number in range(args.rounds):
            # Every other round reversed: a target's place in the round must not favour it.
            order = targets if number % 2 == 0 else targets[::-1]
            for target in order:
                if target in failures:  # failed its check or its start: reported, not retried
                    continue
                runs, error = bench_target(
                    target, args, env, pythons.get(target), files, key, float(expected[0])
                )
                if error:
                    failures[target] = error
                else:
                    rounds[target].append(runs)
    results = {t: bench.median_runs(r) for t, r in rounds.items() if r}
    report = {
        "started_at": stamp,
        "elapsed_s": round(time.monotonic() - started, 1),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "wrk": {"threads": WRK_THREADS, "timeout_s": WRK_TIMEOUT_S},
        "payloads": {"rows": len(rows), "model_dir": str(args.model_dir.relative_to(ROOT))},
        "machine": bench.machine_info(),
        "configuration": configuration(args.peers),
        "results": results,
        "failures": failures,
        "ratios": goals.check(results, args.peers),
    }
    print_report(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "peers.json"
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    plot(report, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}; took {report['elapsed_s']:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
