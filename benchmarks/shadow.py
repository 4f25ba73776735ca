"""What a shadow costs: /v1/score with a challenger scored after every answer against the same
server with no policy.

    make bench-shadow
    .venv/bin/python -m benchmarks.shadow --rounds 6 --duration 3

A repository of the shipped credit-card model as versions 3 and 4 (the same graph, so the
comparison agrees everywhere and the cost is the shadow's work alone). Two servers side by
side: one with no policy (version 4 answers, as without the feature) and one whose policy.json
makes 4 the champion and 3 its shadow. wrk on the shipped samples in the test period's mix of
decisions (one explained answer in 647), each with a transaction id, at 32 connections
(requests/s) and at one (p50), the two servers in turn, every other round in the other order;
the ratio is the median of the rounds' ratios. At the end the shadow server's comparison says
how many requests its shadow scored and how many it dropped. Writes
benchmarks/results/shadow.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2 as httpx
import onnx

from benchmarks.reasons import sample_bodies
from benchmarks.serving import ROOT, SERVE_PYTHON, SERVER_FACTORY, uvicorn_server
from benchmarks.wrk import run_wrk

ROUTE = "/v1/score"
MODEL = ROOT / "models" / "creditcard" / "4"
GOAL_RPS = 0.90  # with a shadow, at least this share of the requests/s without, at c=32
GOAL_P50 = 1.05  # and a p50 within noise of it at c=1
SERVERS = ("no_policy", "shadow")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shadow", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/shadow.json")
    return parser.parse_args(argv)


def as_version(source: Path, model_root: Path, version: str) -> None:
    """A copy of the model folder whose metadata (and signed manifest) say `version`."""
    target = model_root / version
    shutil.copytree(source, target)
    proto = onnx.load(target / "model.onnx")
    for entry in proto.metadata_props:
        if entry.key == "model_version":
            entry.value = version
    data = proto.SerializeToString()
    (target / "model.onnx").write_bytes(data)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    (target / "manifest.json").write_text(json.dumps(manifest))


def repository(folder: Path, policy: dict[str, Any] | None) -> Path:
    model_root = folder / MODEL.parent.name
    model_root.mkdir(parents=True)
    for version in ("3", "4"):
        as_version(MODEL, model_root, version)
    if policy is not None:
        (model_root / "policy.json").write_text(json.dumps(policy))
    return folder


def paired(runs: dict[str, list[dict[str, Any]]], figure: str) -> float:
    """The median over rounds of shadow / no policy, each round's two runs side by side."""
    return statistics.median(
        mine[figure] / theirs[figure]
        for mine, theirs in zip(runs["shadow"], runs["no_policy"], strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: it is Debian's package `wrk` (apt-get install -y wrk)")
    key = secrets.token_urlsafe(24)
    python = SERVE_PYTHON if SERVE_PYTHON.exists() else None
    rps: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    p50: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    with tempfile.TemporaryDirectory(prefix="shadow-") as tmp, ExitStack() as stack:
        # The test period's own mix of answers: nearly all APPROVE (benchmarks/reasons.py).
        lines = sample_bodies(Path(tmp))["real_mix"]
        policies = {"no_policy": None, "shadow": {"champion": "4", "shadow": "3"}}
        servers = {}
        for name, policy in policies.items():
            root = repository(Path(tmp) / name, policy)
            env = {
                "FRAUD_MODEL_REPOSITORY": str(root),
                "FRAUD_MODEL_NAME": MODEL.parent.name,
                "FRAUD_API_KEYS": key,
                "FRAUD_POLL_INTERVAL_S": "0",
            }
            servers[name] = stack.enter_context(uvicorn_server(SERVER_FACTORY, env, python=python))
        for server in servers.values():
            run_wrk(server.port, ROUTE, 32, 2, lines, key)  # warm-up
            run_wrk(server.port, ROUTE, 1, 1, lines, key)
        for number in range(args.rounds):
            order = list(SERVERS) if number % 2 == 0 else list(SERVERS)[::-1]
            for name in order:
                rps[name].append(run_wrk(servers[name].port, ROUTE, 32, args.duration, lines, key))
            for name in order:
                p50[name].append(run_wrk(servers[name].port, ROUTE, 1, args.duration, lines, key))
        comparison = httpx.get(
            f"http://127.0.0.1:{servers['shadow'].port}/v1/models/creditcard/comparison",
            headers={"X-API-Key": key},
            timeout=10,
        ).json()
    for runs in (*rps.values(), *p50.values()):
        if any(r["errors"] for r in runs):
            sys.exit(f"errors in a run: {[r['errors'] for r in runs]}")
    [shadow] = comparison["challengers"]
    throughput = {n: statistics.median(r["rps"] for r in runs) for n, runs in rps.items()}
    latency = {n: statistics.median(r["p50_ms"] for r in runs) for n, runs in p50.items()}
    # Each round's two runs are back to back: the median of their ratios cancels the drift of
    # a shared machine between rounds.
    summary = {
        "rps_c32": throughput,
        "shadow_over_no_policy_rps": paired(rps, "rps"),
        "p50_ms_c1": latency,
        "shadow_over_no_policy_p50": paired(p50, "p50_ms"),
        "shadow_compared": shadow["compared"],
        "shadow_dropped": shadow["dropped"],
        "shadow_agreement": shadow["agreement"],
        "shadow_us_per_row": shadow["after_answer_us_per_row"],
        "rounds": args.rounds,
        "duration_s": args.duration,
        "runs": {"rps_c32": rps, "p50_c1": p50},
    }
    ratio = summary["shadow_over_no_policy_rps"]
    print(
        f"c=32 requests/s: no policy {throughput['no_policy']:.0f}, shadow "
        f"{throughput['shadow']:.0f}, ratio {ratio:.3f} (median of rounds; goal >= {GOAL_RPS}): "
        + ("met" if ratio >= GOAL_RPS else "MISSED")
    )
    ratio = summary["shadow_over_no_policy_p50"]
    print(
        f"c=1 p50: no policy {latency['no_policy']:.3f} ms, shadow {latency['shadow']:.3f} ms, "
        f"ratio {ratio:.3f} (median of rounds; goal <= {GOAL_P50}): "
        + ("met" if ratio <= GOAL_P50 else "MISSED")
    )
    print(
        f"shadow scored {shadow['compared']} requests, dropped {shadow['dropped']}, "
        f"agreement {shadow['agreement']}, {shadow['after_answer_us_per_row']:.1f} us a row"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
