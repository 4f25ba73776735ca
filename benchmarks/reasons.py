"""What reason codes cost: a DECLINE's latency against an APPROVE's, and throughput on a
mostly-APPROVE mix with reasons on against off.

    make bench-reasons
    .venv/bin/python -m benchmarks.reasons --rounds 6 --duration 3

Two servers of the shipped credit-card model run side by side, FRAUD_REASONS=3 (the default)
and FRAUD_REASONS=0 (no reasons, as before they existed). wrk, one connection, on the first:
shipped fraud samples the model declines (each answer explained: one more model run of 30
rows) against legitimate ones it approves (no extra work), p50 compared. Then both servers at
32 connections on two mixes, every other round in the other order, medians compared: the real
one, approved and declined transactions in the share of answers that were not APPROVE on the
test period (the model card's REVIEW-or-DECLINE count: 88 of 56,961 for the credit-card
model, one in 647), and a harder one of 99 approved to one declined. Writes
benchmarks/results/reasons.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import ROOT, SERVE_PYTHON, SERVER_FACTORY, uvicorn_server
from benchmarks.wrk import run_wrk
from server.scorer import OnnxScorer

ROUTE = "/v1/score"
MODEL = ROOT / "models" / "creditcard" / "4"
GOAL_DECLINE_P50 = 2.0  # a DECLINE's p50 at most this many times an APPROVE's, at c=1
GOAL_MIX_RPS = 0.95  # the mix's requests/s with reasons, as a share of without, at c=32
APPROVED_PER_DECLINED = 99  # the harder mix: one explained answer in a hundred
MIXES = ("real_mix", "mix")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reasons", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reasons.json")
    return parser.parse_args(argv)


def approved_per_declined_in_service() -> int:
    """On the test period, how many answers were APPROVE for each one that was not (and so
    was explained), from the model card."""
    test = json.loads((MODEL / "metrics.json").read_text())["test"]
    flagged = test["at_thresholds"]["review"]  # REVIEW or DECLINE: review <= decline
    explained = flagged["tp"] + flagged["fp"]
    return max(round((test["rows"] - explained) / explained), 1)


def sample_bodies(folder: Path) -> dict[str, Path]:
    """Files of /v1 bodies, one a line: the shipped samples the model declines, those it
    approves, and the mixes of the two."""
    scorer = OnnxScorer.load(MODEL)
    rows = json.loads((MODEL / "samples.json").read_text())["rows"]
    features = np.asarray([r["features"] for r in rows], np.float32)
    probabilities = scorer.predict(features)
    declined = [
        r["features"]
        for r, p in zip(rows, probabilities, strict=True)
        if p >= scorer.info.decline_threshold
    ]
    approved = [
        r["features"]
        for r, p in zip(rows, probabilities, strict=True)
        if p < scorer.info.review_threshold
    ]
    if not declined or not approved:
        sys.exit("the shipped samples hold no declined or no approved transaction")
    mixes = {
        name: [approved[i % len(approved)] for i in range(n)] + declined[:1]
        for name, n in (
            ("real_mix", approved_per_declined_in_service()),
            ("mix", APPROVED_PER_DECLINED),
        )
    }
    files = {}
    for name, chosen in (("declined", declined), ("approved", approved), *mixes.items()):
        files[name] = folder / f"{name}.jsonl"
        lines = [
            json.dumps({"transaction_id": f"{name}-{i}", "features": f})
            for i, f in enumerate(chosen)
        ]
        files[name].write_text("\n".join(lines) + "\n")
    return files


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: it is Debian's package `wrk` (apt-get install -y wrk)")
    key = secrets.token_urlsafe(24)
    env = {
        "FRAUD_MODEL_REPOSITORY": str(MODEL.parent.parent),
        "FRAUD_MODEL_NAME": MODEL.parent.name,
        "FRAUD_API_KEYS": key,
        "FRAUD_POLL_INTERVAL_S": "0",
    }
    python = SERVE_PYTHON if SERVE_PYTHON.exists() else None
    latency: dict[str, list[dict[str, Any]]] = {"declined": [], "approved": []}
    mix: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"reasons": [], "no_reasons": []} for name in MIXES
    }
    with tempfile.TemporaryDirectory(prefix="reasons-") as tmp, ExitStack() as stack:
        bodies = sample_bodies(Path(tmp))
        servers = {
            name: stack.enter_context(
                uvicorn_server(SERVER_FACTORY, env | {"FRAUD_REASONS": n}, python=python)
            )
            for name, n in (("reasons", "3"), ("no_reasons", "0"))
        }
        port = servers["reasons"].port
        for name in latency:
            run_wrk(port, ROUTE, 1, 2, bodies[name], key)  # warm-up
        for number in range(args.rounds):
            order = list(latency) if number % 2 == 0 else list(latency)[::-1]
            for name in order:
                latency[name].append(run_wrk(port, ROUTE, 1, args.duration, bodies[name], key))
        for server in servers.values():
            run_wrk(server.port, ROUTE, 32, 2, bodies["mix"], key)  # warm-up
        for number in range(args.rounds):
            for kind in MIXES:
                runs = mix[kind]
                order = list(runs) if number % 2 == 0 else list(runs)[::-1]
                for name in order:
                    port = servers[name].port
                    runs[name].append(run_wrk(port, ROUTE, 32, args.duration, bodies[kind], key))
    every = [*latency.values(), *(r for runs in mix.values() for r in runs.values())]
    for runs in every:
        if any(r["errors"] for r in runs):
            sys.exit(f"errors in a run: {[r['errors'] for r in runs]}")
    p50 = {name: statistics.median(r["p50_ms"] for r in runs) for name, runs in latency.items()}
    rps = {
        kind: {name: statistics.median(r["rps"] for r in runs) for name, runs in mix[kind].items()}
        for kind in MIXES
    }
    summary = {
        "c1_p50_ms": p50,
        "decline_over_approve_p50": p50["declined"] / p50["approved"],
        "real_mix_approved_per_declined": approved_per_declined_in_service(),
        "mix_approved_per_declined": APPROVED_PER_DECLINED,
        "mix_rps_c32": rps,
        "mix_with_over_without": {k: v["reasons"] / v["no_reasons"] for k, v in rps.items()},
        "rounds": args.rounds,
        "duration_s": args.duration,
        "runs": {"latency": latency, "mix": mix},
    }
    print(f"c=1 p50: declined {p50['declined']:.3f} ms, approved {p50['approved']:.3f} ms")
    print(
        f"  ratio {summary['decline_over_approve_p50']:.2f} (goal <= {GOAL_DECLINE_P50}): "
        + ("met" if summary["decline_over_approve_p50"] <= GOAL_DECLINE_P50 else "MISSED")
    )
    for kind, share in (
        ("real_mix", summary["real_mix_approved_per_declined"]),
        ("mix", APPROVED_PER_DECLINED),
    ):
        ratio = rps[kind]["reasons"] / rps[kind]["no_reasons"]
        print(
            f"c=32, {share} approved to 1 declined: requests/s reasons "
            f"{rps[kind]['reasons']:.0f}, none {rps[kind]['no_reasons']:.0f}, ratio {ratio:.3f} "
            f"(goal >= {GOAL_MIX_RPS}): " + ("met" if ratio >= GOAL_MIX_RPS else "MISSED")
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
