"""Where a request's microseconds go: py-spy samples the server while wrk loads it.

    python -m benchmarks.profile [--route /v1/score] [--concurrency 32] [--duration 10]

The server runs from the serving venv with the shipped models; wrk (one thread) loads one
route while py-spy samples the server's stacks (250 a second, without pausing it). Each sample
is put in the first stage, from the innermost frame out, whose rule matches, and the stages are
printed as shares of the samples and as microseconds per answered request. `--root` profiles
the server of another checkout of this repository, for a before-and-after.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.serving import ROOT, SERVE_PYTHON, SERVER_FACTORY, uvicorn_server
from benchmarks.wrk import run_wrk

KEY = "profile-key"
RATE_HZ = 250
# (stage, pattern on "function (file)"), tried on each frame from the innermost out.
STAGES = (
    ("model: onnxruntime", r"onnxruntime"),
    ("model: batcher and hand-off", r"server/batching\.py"),
    ("parse and validate", r"server/(payloads|tensors)\.py|orjson\.loads"),
    ("metrics and counts", r"server/(metrics|collectors|drift)\.py"),
    ("decide and build the answer", r"server/service\.py|server/events\.py"),
    ("route, key, body, send (server)", r"server/(hotpath|endpoints|v2|auth|middleware)\.py"),
    ("HTTP: uvicorn and httptools", r"uvicorn/|httptools|server/protocol\.py"),
    ("Starlette", r"starlette/"),
    ("event loop and sockets", r"asyncio/|uvloop"),
)
FRAME = re.compile(r"(.*) \((.*?):\d+\)$")


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, pattern in STAGES:
            if re.search(pattern, frame):
                return stage
    return "other"


def read_samples(raw: str) -> Counter[str]:
    """py-spy's raw (collapsed) output: `frame;frame;... count` per line."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames = []
        for frame in stack.split(";"):
            found = FRAME.match(frame)
            frames.append(f"{found[1]} ({found[2]})" if found else frame)
        counts[stage_of(frames)] += int(count)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route", default="/v1/score")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to profile")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    rows = json.loads(next((root / "models/creditcard").glob("*/samples.json")).read_text())
    with tempfile.TemporaryDirectory() as scratch:
        bodies = Path(scratch, "bodies")
        if args.route.startswith("/v2/"):
            width = len(rows["feature_names"])
            bodies.write_text(
                "".join(
                    json.dumps(
                        {
                            "inputs": [
                                {
                                    "name": "features",
                                    "shape": [1, width],
                                    "datatype": "FP32",
                                    "data": r["features"],
                                }
                            ]
                        }
                    )
                    + "\n"
                    for r in rows["rows"]
                )
            )
        else:
            bodies.write_text(
                "".join(json.dumps({"features": r["features"]}) + "\n" for r in rows["rows"])
            )
        raw = Path(scratch, "stacks.txt")
        env = {
            "PYTHONPATH": str(root),
            "FRAUD_MODEL_REPOSITORY": str(root / "models"),
            "FRAUD_DEFAULT_MODEL": "creditcard",
            "FRAUD_API_KEYS": KEY,
        }
        with uvicorn_server(SERVER_FACTORY, env, python=SERVE_PYTHON, cwd=root) as server:
            run_wrk(server.port, args.route, args.concurrency, 2, bodies, KEY)  # warm-up
            spy = subprocess.Popen(
                [
                    str(ROOT / ".venv/bin/py-spy"),
                    "record",
                    "--pid",
                    str(server.process.pid),
                    "--duration",
                    str(args.duration + 1),
                    "--rate",
                    str(RATE_HZ),
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            result = run_wrk(server.port, args.route, args.concurrency, args.duration, bodies, KEY)
            spy.wait(timeout=args.duration + 30)
        counts = read_samples(raw.read_text())
    total = sum(counts.values())
    requests = result["requests"]
    print(
        f"{args.route} at c={args.concurrency}: {result['rps']:.0f} requests/s, "
        f"p99 {result.get('p99_ms')} ms; {total} samples of the server's thread"
    )
    print(f"{'stage':<36}{'share':>8}{'us per request':>16}")
    stages: dict[str, dict[str, float]] = {}
    for stage, count in counts.most_common():
        us = count / RATE_HZ / requests * 1e6
        stages[stage] = {"share": count / total, "us_per_request": us}
        print(f"{stage:<36}{count / total:>8.1%}{us:>16.1f}")
    busy = total / RATE_HZ / requests * 1e6
    print(f"{'all sampled (busy) time':<36}{'':>8}{busy:>16.1f}")
    if args.out:
        figures = {
            "route": args.route,
            "concurrency": args.concurrency,
            "wrk": result,
            "samples": total,
            "stages": stages,
            "busy_us_per_request": busy,
        }
        args.out.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
