"""Throughput and latency of POST /v1/score against three baselines, and of raw events, under wrk.

Runs its targets one at a time, each under uvicorn with identical flags on a free loopback port:
floor (a bare Starlette endpoint, benchmarks/baselines/floor.py), server (server.app), server_v2
(server.app, the same rows as Open Inference Protocol JSON to /v2/models/<name>/infer),
server_grpc (server.app, the same rows as gRPC ModelInfer calls, by benchmarks/grpcload.py),
grpc_floor (grpc.aio on uvicorn answering ModelInfer with a constant, benchmarks/baselines),
fastapi_ort (FastAPI + one onnxruntime run per request) and keras_predict (FastAPI + Keras
model.predict); fastapi_ort_async, the same with an `async def` endpoint, runs only if asked for.
events and events_redis post raw events to /v1/models/mobile-money/events/score, the account
state in process and in a redis-server of the benchmark's own; every request is a new event
(benchmarks/eventload.py), and every account has a short history before the load.
Each gets the same 256 pre-encoded rows, drawn with a fixed seed from normal distributions with
the training mean and std in the ONNX metadata, from `wrk --latency` at every concurrency: a
warm-up run, then a measured one. It also times onnxruntime alone per row at batch 1, 8 and 64.
Prints a table and the ratios the server is held to, and writes benchmarks/results/<UTC>.json and
.png, copied to latest.json and latest.png. Needs wrk (Debian package `wrk`) and the .venv with
requirements-bench.txt installed, and redis-server for events_redis. Exits 1 if a target
could not be measured or an event was not answered 2xx, at once if the newest mobile-money
version in models/ does not take raw events.

    make bench
    .venv/bin/python -m benchmarks.bench --duration 5 --concurrency 1,32 --targets floor,server
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks import eventload
from benchmarks.eventload import EventStream
from benchmarks.redis_server import MISSING as REDIS_MISSING
from benchmarks.redis_server import redis_server
from benchmarks.serving import (
    ROOT,
    free_port,
    model_env,
    shipped_model_dir,
    uvicorn_server,
    wait_ready,
)
from benchmarks.summary import compare, fmt, plot, print_summary, shares
from benchmarks.wrk import WRK_THREADS, WRK_TIMEOUT_S, run_wrk, run_wrk_script
from server.scorer import session_options

V1_SCORE = "/v1/score"
V2_INFER = "/v2/models/{model}/infer"
V1_NAMED = "/v1/models/{model}/score"
V1_EVENTS = "/v1/models/{model}/events/score"
# Not a path: the Open Inference Protocol's ModelInfer over gRPC, by benchmarks/grpcload.py.
GRPC_INFER = "gRPC ModelInfer"
SERVER = "server.app:create_app"
# target: (uvicorn factory, route it is measured on, settings on top of the defaults)
TARGETS: dict[str, tuple[str, str, dict[str, str]]] = {
    "floor": ("benchmarks.baselines.floor:create_app", V1_SCORE, {}),
    "server": (SERVER, V1_SCORE, {}),
    "server_v2": (SERVER, V2_INFER, {}),
    "server_grpc": (SERVER, GRPC_INFER, {}),
    # grpcio's own cost: grpc.aio on uvicorn's loop answering a constant (the gRPC floor).
    "grpc_floor": ("benchmarks.baselines.grpc_floor:create_app", GRPC_INFER, {}),
    # The named route, /v1/models/{name}/score: the same fast path as /v1/score.
    "server_named": (SERVER, V1_NAMED, {}),
    "fastapi_ort": ("benchmarks.baselines.fastapi_ort:create_app", V1_SCORE, {}),
    "keras_predict": ("benchmarks.baselines.fastapi_keras:create_app", V1_SCORE, {}),
    # Raw events on the --events-model-dir model; events_redis gets FRAUD_STATE_URL at start.
    "events": (SERVER, V1_EVENTS, {}),
    "events_redis": (SERVER, V1_EVENTS, {}),
    # Not run by default: what the server's own features cost (make bench-overhead),
    # and fastapi_ort with an `async def` endpoint.
    "server_no_metrics": (SERVER, V1_SCORE, {"FRAUD_METRICS": "false"}),
    "server_access_log": (SERVER, V1_SCORE, {"FRAUD_ACCESS_LOG": "true"}),
    "fastapi_ort_async": ("benchmarks.baselines.fastapi_ort:create_async_app", V1_SCORE, {}),
}
DEFAULT_TARGETS = (
    "floor,server,server_v2,server_grpc,grpc_floor,fastapi_ort,keras_predict,events,events_redis"
)
REDIS_TARGETS = ("events_redis",)
KERAS_RUN = Path(os.environ.get("BENCH_KERAS_RUN", "runs/creditcard"), "model.keras")
DISTINCT_BODIES = 256
READY_TIMEOUT_S = 60.0
ORT_BATCHES = (1, 8, 64)
PACKAGES = ("onnxruntime", "starlette", "uvicorn", "fastapi", "pydantic", "numpy", "tensorflow")
ROW = "{:<18}{:>5}{:>11}{:>9}{:>9}{:>8}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per run")
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--targets", default=DEFAULT_TARGETS, help=f"of {', '.join(TARGETS)}")
    parser.add_argument("--model-dir", default="models/creditcard/4")
    parser.add_argument(
        "--events-model-dir",
        type=Path,
        default=shipped_model_dir("mobile-money"),
        help="the model the event targets serve: by default the newest mobile-money in models/",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run all targets this many times, interleaved (every other round reversed),"
        " and keep each point's median run by requests/s: on a shared machine, drift in the"
        " background then hits every target alike",
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.targets = args.targets.split(",")
    if unknown := set(args.targets) - set(TARGETS):
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    return args


def load_session(path: Path) -> ort.InferenceSession:
    """A session configured exactly as the server configures its own."""
    return ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])


def time_ort(session: ort.InferenceSession, name: str, rows: np.ndarray) -> dict[str, float]:
    """Median microseconds per row of session.run, per batch size; bounded in calls and time."""
    result = {}
    for batch in ORT_BATCHES:
        feeds = [{name: np.roll(rows, -i * batch, axis=0)[:batch]} for i in range(16)]
        times: list[int] = []
        deadline = time.perf_counter() + 2.0
        while len(times) < 2000 and time.perf_counter() < deadline:
            start = time.perf_counter_ns()
            session.run(None, feeds[len(times) % len(feeds)])
            times.append(time.perf_counter_ns() - start)
        result[str(batch)] = float(np.median(times)) / 1000 / batch
    return result


def check_score(port: int, path: str, body: str, key: str) -> str | None:
    """None if one scoring request answers 200: a target that rejects the load is not measured."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", "X-API-Key": key}
        conn.request("POST", path, body.encode(), headers)
        response = conn.getresponse()
        answer = response.read()
    except OSError as exc:
        return f"POST {path} failed: {exc}"
    finally:
        conn.close()
    return None if response.status == 200 else f"POST answered {response.status}: {answer!r:.300}"


def bench_target(
    name: str, args: argparse.Namespace, env: dict[str, str], bodies: dict[str, Path], key: str
) -> tuple[dict[str, Any], str | None]:
    """The target's wrk results per concurrency, printed as they come, and why it stopped if so."""
    runs: dict[str, Any] = {}
    error: str | None = None
    rejected: list[str] = []  # event runs with answers other than 2xx: not scoring work
    app, route, overrides = TARGETS[name]
    settings = env | overrides
    # Every server process starts with no account state, so each gets a stream of its own.
    stream = EventStream() if route == V1_EVENTS else None
    if stream is not None:
        settings |= model_env(args.events_model_dir)
    path = route.format(model=settings["FRAUD_MODEL_NAME"])
    if route == GRPC_INFER:
        settings["FRAUD_GRPC_PORT"] = str(grpc_port := free_port())

    def load(port: int, c: int, seconds: float) -> dict[str, Any]:
        if route == GRPC_INFER:
            return run_grpc(grpc_port, c, seconds, bodies[route], key, settings)
        if stream is None:
            return run_wrk(port, path, c, seconds, bodies[route], key)
        script_args = stream.wrk_args(key, WRK_THREADS)
        r = run_wrk_script(port, path, c, seconds, eventload.LUA, script_args)
        # wrk counts the answered requests; up to c more were in flight when it stopped.
        stream.sent(r["requests"] + sum(r["socket_errors"].values()) + c)
        if r["non_2xx"]:
            rejected.append(f"{r['non_2xx']} of {r['requests']} events not 2xx at c={c}")
        return r

    try:
        with ExitStack() as stack:
            if name in REDIS_TARGETS:
                settings["FRAUD_STATE_URL"] = stack.enter_context(redis_server())
            server = stack.enter_context(uvicorn_server(app, settings, timeout_s=READY_TIMEOUT_S))
            if route == GRPC_INFER:
                tried = load(server.port, 1, 0.2)
                error = None if tried["requests"] and not tried["errors"] else f"gRPC: {tried}"
            elif stream is None:
                first = bodies[route].read_text().splitlines()[0]
                error = check_score(server.port, path, first, key)
            else:
                error = check_score(server.port, path, stream.bodies(1)[0], key)
            if stream is not None and error is None:
                error = eventload.prime(server.port, path + "/batch", key, stream)
            for c in [] if error else args.concurrency:
                if args.warmup:
                    load(server.port, c, args.warmup)
                    # A target still working through requests wrk abandoned (keras_predict's
                    # thread pool) must not pass that backlog on to the next run.
                    wait_ready(server, "/v1/health/ready", READY_TIMEOUT_S)
                runs[str(c)] = r = load(server.port, c, args.duration)
                p50, p99 = fmt(r.get("p50_ms")), fmt(r.get("p99_ms"))
                print(ROW.format(name, c, f"{r['rps']:.1f}", p50, p99, r["errors"]), flush=True)
                wait_ready(server, "/v1/health/ready", READY_TIMEOUT_S)
            output = server.log_text()
    except RuntimeError as exc:  # not ready, or exited: the message carries its log
        error, output = str(exc).splitlines()[0], str(exc)
    if error or "Traceback" in output:
        print(f"{name}: {error or 'logged a traceback'}; its log ends:\n{output[-3000:]}")
    if rejected and not error:
        error = "; ".join(rejected)
        print(f"{name}: {error}")
    return runs, error


def run_grpc(
    port: int, c: int, seconds: float, rows: Path, key: str, settings: dict[str, str]
) -> dict[str, Any]:
    """benchmarks/grpcload.py in a process of its own, as wrk is one."""
    command = [sys.executable, "-m", "benchmarks.grpcload", "--port", str(port)]
    command += ["--model", settings["FRAUD_MODEL_NAME"], "--bodies", str(rows)]
    command += ["--key", key, "--concurrency", str(c), "--duration", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 60)
    if done.returncode:
        raise RuntimeError(f"the gRPC load exited with {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def median_runs(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per concurrency, the run with the median requests/s among the rounds."""
    result = {}
    for c in {c for runs in rounds for c in runs}:
        runs = sorted((r[c] for r in rounds if c in r), key=lambda run: run["rps"])
        result[c] = runs[(len(runs) - 1) // 2] | {"rounds_rps": [r["rps"] for r in runs]}
    return dict(sorted(result.items(), key=lambda item: int(item[0])))


def machine_info() -> dict[str, Any]:
    def run(*command: str) -> str:
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT).stdout.strip()

    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    dirty = " with uncommitted changes" if run("git", "status", "--porcelain") else ""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu[1] if cpu else platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {p: metadata.version(p) for p in PACKAGES},
        "wrk": run("wrk", "-v").split(" Copyright")[0],
        "git": run("git", "rev-parse", "--short", "HEAD") + dirty,
    }


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: it is Debian's package `wrk` (apt-get install -y wrk)")
    events = [t for t in args.targets if TARGETS[t][1] == V1_EVENTS]
    if events and (problem := eventload.model_problem(ROOT / args.events_model_dir)):
        sys.exit(f"cannot run {', '.join(events)}: {problem}")
    if set(REDIS_TARGETS) & set(args.targets) and shutil.which("redis-server") is None:
        sys.exit(REDIS_MISSING)
    started, stamp = time.monotonic(), datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    session = load_session(ROOT / args.model_dir / "model.onnx")
    meta = session.get_modelmeta().custom_metadata_map
    mean = np.asarray(json.loads(meta["feature_mean"]))
    std = np.asarray(json.loads(meta["feature_std"]))
    rows = np.random.default_rng(args.seed).normal(mean, std, size=(DISTINCT_BODIES, len(mean)))
    v1_bodies = [
        json.dumps({"transaction_id": f"bench-{i}", "features": row.tolist()})
        for i, row in enumerate(rows)
    ]
    bodies = {
        V1_SCORE: v1_bodies,
        V1_NAMED: v1_bodies,
        V2_INFER: [
            json.dumps(
                {
                    "id": f"bench-{i}",
                    "inputs": [
                        {
                            "name": meta["input_name"],
                            "datatype": "FP32",
                            "shape": [1, len(row)],
                            "data": row.tolist(),
                        }
                    ],
                }
            )
            for i, row in enumerate(rows)
        ],
    }
    ort_us = time_ort(session, meta["input_name"], rows.astype(np.float32))
    key = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    env |= model_env(args.model_dir) | {"FRAUD_API_KEYS": key, "PYTHONPATH": str(ROOT)}
    notes = {}
    if "keras_predict" in args.targets and not (ROOT / KERAS_RUN).is_file():
        notes["keras_predict"] = (
            f"no {KERAS_RUN} (`make train` writes it): "
            "served the same architecture with random weights"
        )
    print(f"{args.warmup} s warm-up, then {args.duration} s measured, per target and concurrency")
    print(ROW.format("target", "c", "rps", "p50 ms", "p99 ms", "errors"), flush=True)
    results, failures = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        paths = {}
        for route, lines in bodies.items():
            paths[route] = Path(tmp) / f"bodies-{len(paths)}.jsonl"
            paths[route].write_text("\n".join(lines) + "\n")
        paths[GRPC_INFER] = Path(tmp) / "rows.npy"
        np.save(paths[GRPC_INFER], rows.astype(np.float32))
        rounds: dict[str, list[dict[str, Any]]] = {target: [] for target in args.targets}
        for number in range(args.rounds):
            # Every other round in reverse order: the position in a round biases a run
            # (by up to 8 % here, whichever target comes first), and must not favour one.
            order = args.targets if number % 2 == 0 else args.targets[::-1]
            for target in order:
                runs, error = bench_target(target, args, env, paths, key)
                rounds[target].append(runs)
                if error:
                    failures[target] = error
        results = {target: median_runs(runs) for target, runs in rounds.items()}
    ratios, goals = compare(results, args.concurrency)
    report = {
        "started_at": stamp,
        "elapsed_s": round(time.monotonic() - started, 1),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "wrk": {"threads": WRK_THREADS, "timeout_s": WRK_TIMEOUT_S},
        "payloads": {"distinct": DISTINCT_BODIES, "seed": args.seed, "model_dir": args.model_dir},
        "events": EventStream().describe() | {"model_dir": str(args.events_model_dir)},
        "machine": machine_info(),
        "ort_us_per_row": ort_us,
        "results": results,
        "failures": failures,
        "ratios": ratios,
        "shares": shares(results, args.concurrency),
        "goals": goals,
        "notes": notes,
    }
    print_summary(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    plot(report, out.with_suffix(".png"))
    shutil.copyfile(out, args.out_dir / "latest.json")
    shutil.copyfile(out.with_suffix(".png"), args.out_dir / "latest.png")
    print(
        f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} and .png, "
        f"copied to latest.json and latest.png; took {report['elapsed_s']:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
