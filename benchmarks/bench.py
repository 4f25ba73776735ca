"""Throughput and latency of POST /v1/score against three baselines, under wrk.

Runs five targets one at a time, each under uvicorn with identical flags on a free loopback port:
floor (a bare Starlette endpoint, benchmarks/baselines/floor.py), server (server.app), server_v2
(server.app, the same rows as Open Inference Protocol JSON to /v2/models/<name>/infer),
fastapi_ort (FastAPI + one onnxruntime run per request) and keras_predict (FastAPI + Keras
model.predict); fastapi_ort_async, the same with an `async def` endpoint, runs only if asked for.
Each gets the same 256 pre-encoded rows, drawn with a fixed seed from normal distributions with
the training mean and std in the ONNX metadata, from `wrk --latency` at every concurrency: a
warm-up run, then a measured one. It also times onnxruntime alone per row at batch 1, 8 and 64.
Prints a table and the ratios the server is held to, and writes benchmarks/results/<UTC>.json and
.png, copied to latest.json and latest.png. Needs wrk (Debian package `wrk`) and the .venv with
requirements-bench.txt installed. Exits 1 if a target could not be measured.

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
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.serving import ROOT, model_env, uvicorn_server, wait_ready
from server.scorer import session_options

LUA = ROOT / "benchmarks/wrk_post.lua"
V1_SCORE = "/v1/score"
V2_INFER = "/v2/models/{model}/infer"
V1_NAMED = "/v1/models/{model}/score"
SERVER = "server.app:create_app"
# target: (uvicorn factory, route it is measured on, settings on top of the defaults)
TARGETS: dict[str, tuple[str, str, dict[str, str]]] = {
    "floor": ("benchmarks.baselines.floor:create_app", V1_SCORE, {}),
    "server": (SERVER, V1_SCORE, {}),
    "server_v2": (SERVER, V2_INFER, {}),
    # The named route, /v1/models/{name}/score: the same fast path as /v1/score.
    "server_named": (SERVER, V1_NAMED, {}),
    "fastapi_ort": ("benchmarks.baselines.fastapi_ort:create_app", V1_SCORE, {}),
    "keras_predict": ("benchmarks.baselines.fastapi_keras:create_app", V1_SCORE, {}),
    # Not run by default: what the server's own features cost (make bench-overhead),
    # and fastapi_ort with an `async def` endpoint.
    "server_no_metrics": (SERVER, V1_SCORE, {"FRAUD_METRICS": "false"}),
    "server_access_log": (SERVER, V1_SCORE, {"FRAUD_ACCESS_LOG": "true"}),
    "fastapi_ort_async": ("benchmarks.baselines.fastapi_ort:create_async_app", V1_SCORE, {}),
}
DEFAULT_TARGETS = "floor,server,server_v2,fastapi_ort,keras_predict"
# (target, baseline): requests/s ratios printed when both ran
SHARES = (
    ("server_v2", "server"),
    ("server_named", "server"),
    ("server", "server_no_metrics"),
    ("server_access_log", "server"),
)
KERAS_RUN = Path(os.environ.get("BENCH_KERAS_RUN", "runs/creditcard"), "model.keras")
DISTINCT_BODIES = 256
READY_TIMEOUT_S = 60.0
WRK_TIMEOUT_S = 10  # wrk's default of 2 s would turn keras_predict's queueing into errors
ORT_BATCHES = (1, 8, 64)
PACKAGES = ("onnxruntime", "starlette", "uvicorn", "fastapi", "pydantic", "numpy", "tensorflow")
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}
# ratio: (goal, True if it must be at least the goal else at most, at these concurrencies or all)
GOALS: dict[str, tuple[float, bool, tuple[int, ...] | None]] = {
    "server/floor rps": (0.80, True, (32,)),
    "server/floor p99": (2.0, False, (1,)),
    "server/fastapi_ort rps": (3.0, True, None),
    "server/keras_predict rps": (300.0, True, None),
}
ROW = "{:<18}{:>5}{:>11}{:>9}{:>9}{:>8}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per run")
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--targets", default=DEFAULT_TARGETS, help=f"of {', '.join(TARGETS)}")
    parser.add_argument("--model-dir", default="models/creditcard/2")
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
    # One wrk thread at every concurrency: this machine has 2 cores, the server (one worker, one
    # ORT thread) needs one, and one wrk thread sends ~20,000 requests/s here on a third of a core,
    # more than any target serves; a second wrk thread would take CPU from the server it measures.
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT_S}s"]
    command += ["--latency", "-s", str(LUA), f"http://127.0.0.1:{port}{path}"]
    command += ["--", str(bodies), key]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr}")
    return parse_wrk(done.stdout)


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def bench_target(
    name: str, args: argparse.Namespace, env: dict[str, str], bodies: dict[str, Path], key: str
) -> tuple[dict[str, Any], str | None]:
    """The target's wrk results per concurrency, printed as they come, and why it stopped if so."""
    runs: dict[str, Any] = {}
    error: str | None = None
    app, route, overrides = TARGETS[name]
    path, payloads = route.format(model=env["FRAUD_MODEL_NAME"]), bodies[route]
    try:
        with uvicorn_server(app, env | overrides, timeout_s=READY_TIMEOUT_S) as server:
            first = payloads.read_text().splitlines()[0]
            error = check_score(server.port, path, first, key)
            for c in [] if error else args.concurrency:
                if args.warmup:
                    run_wrk(server.port, path, c, args.warmup, payloads, key)
                    # A target still working through requests wrk abandoned (keras_predict's
                    # thread pool) must not pass that backlog on to the next run.
                    wait_ready(server, "/v1/health/ready", READY_TIMEOUT_S)
                runs[str(c)] = r = run_wrk(server.port, path, c, args.duration, payloads, key)
                p50, p99 = fmt(r.get("p50_ms")), fmt(r.get("p99_ms"))
                print(ROW.format(name, c, f"{r['rps']:.1f}", p50, p99, r["errors"]), flush=True)
                wait_ready(server, "/v1/health/ready", READY_TIMEOUT_S)
            output = server.log_text()
    except RuntimeError as exc:  # not ready, or exited: the message carries its log
        error, output = str(exc).splitlines()[0], str(exc)
    if error or "Traceback" in output:
        print(f"{name}: {error or 'logged a traceback'}; its log ends:\n{output[-3000:]}")
    return runs, error


def median_runs(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per concurrency, the run with the median requests/s among the rounds."""
    result = {}
    for c in {c for runs in rounds for c in runs}:
        runs = sorted((r[c] for r in rounds if c in r), key=lambda run: run["rps"])
        result[c] = runs[(len(runs) - 1) // 2] | {"rounds_rps": [r["rps"] for r in runs]}
    return dict(sorted(result.items(), key=lambda item: int(item[0])))


def compare(results: dict[str, dict[str, Any]], cs: list[int]) -> tuple[dict, list]:
    """The server's ratio to each baseline per concurrency, and the goals checked on them."""
    ratios: dict[str, dict[str, float | None]] = {}
    goals = []
    for name, (goal, at_least, only) in GOALS.items():
        baseline, field = name.removeprefix("server/").split()
        field = field if field == "rps" else f"{field}_ms"
        ratios[name] = {}
        for c in cs:
            a = results.get("server", {}).get(str(c), {}).get(field)
            b = results.get(baseline, {}).get(str(c), {}).get(field)
            ratios[name][str(c)] = value = a / b if a and b else None
            if value is not None and (only is None or c in only):
                met = value >= goal if at_least else value <= goal
                goals.append(dict(ratio=name, concurrency=c, goal=goal, value=value, met=met))
    return ratios, goals


def print_summary(report: dict[str, Any]) -> None:
    cs = report["concurrency"]
    print(f"\n{'ratio':<26}" + "".join(f"{'c=' + str(c):>10}" for c in cs) + "  goal")
    for name, values in report["ratios"].items():
        goal, at_least, only = GOALS[name]
        where = f" at c={','.join(map(str, only))}" if only else ""
        cells = "".join(f"{fmt(v):>10}" for v in values.values())
        print(f"{name:<26}{cells}  {'>=' if at_least else '<='} {goal:g}{where}")
    missed = [g for g in report["goals"] if not g["met"]]
    print(f"goals met: {len(report['goals']) - len(missed)} of {len(report['goals'])}", end="")
    print("".join(f"; missed {g['ratio']} at c={g['concurrency']}" for g in missed))
    for target, baseline in SHARES:
        a, b = report["results"].get(target, {}), report["results"].get(baseline, {})
        both = [str(c) for c in cs if str(c) in a and str(c) in b]
        if both:
            shares = ", ".join(f"c={c}: {a[c]['rps'] / b[c]['rps']:.3f}" for c in both)
            print(f"{target}/{baseline} rps: {shares}")
    per_row = ", ".join(f"batch {b}: {us:.2f}" for b, us in report["ort_us_per_row"].items())
    print(f"onnxruntime session.run alone, median us per row: {per_row}")
    for target, note in report["notes"].items():
        print(f"note, {target}: {note}")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = report["concurrency"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for target, runs in report["results"].items():
        done = [c for c in cs if str(c) in runs]
        color = left.plot(done, [runs[str(c)]["rps"] for c in done], "o-", label=target)[0]
        for q, style in (("p50", "o--"), ("p99", "s-")):
            points = [(c, runs[str(c)][f"{q}_ms"]) for c in done if f"{q}_ms" in runs[str(c)]]
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            right.plot(xs, ys, style, color=color.get_color(), label=f"{target} {q}")
    left.set(title="throughput", ylabel="requests/s (log)")
    right.set(title="latency: p50 dashed, p99 solid", ylabel="ms (log)")
    for ax in (left, right):
        ax.set(xscale="log", yscale="log", xlabel="concurrent connections (wrk -c)")
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(
        f"POST /v1/score, {machine['nproc']} cores, {machine['git']}, {report['started_at']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
        "wrk": {"threads": 1, "timeout_s": WRK_TIMEOUT_S},
        "payloads": {"distinct": DISTINCT_BODIES, "seed": args.seed, "model_dir": args.model_dir},
        "machine": machine_info(),
        "ort_us_per_row": ort_us,
        "results": results,
        "failures": failures,
        "ratios": ratios,
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
