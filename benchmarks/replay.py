"""Replay the shipped mobile-money model's own event stream through a real server.

The stream the model was trained on (regenerated from its config.json: rows and seed) is sent
in time order to /v1/models/mobile-money/events/score/batch, by several callers that each own a
share of the accounts (so each account's events arrive in order), and the answers for the test
period (from data.json) are compared with the offline execution of the same definitions:
every feature, and the score onnxruntime gives the offline features directly. This is the
replay-parity test of tests/test_events_live.py at the size of the real training stream.

    .venv/bin/python -m benchmarks.replay                         # in-process store
    .venv/bin/python -m benchmarks.replay --store redis --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import onnxruntime as ort

from benchmarks.redis_server import redis_server
from benchmarks.serving import (
    SERVE_PYTHON,
    SERVER_FACTORY,
    model_env,
    shipped_model_dir,
    uvicorn_server,
)
from features.events import EVENT_FIELDS, FEATURES, features_over_history
from features.reading import event_from_mapping

API_KEY = "replay-key"
ROUTE = "/v1/models/mobile-money/events/score/batch"


def stream(model_dir: Path, rows: int | None) -> tuple[list[dict[str, Any]], float]:
    """The model's training stream as JSON bodies, and where its test period starts."""
    from training.synthetic import generate_events

    config = json.loads((model_dir / "config.json").read_text())
    split = json.loads((model_dir / "data.json").read_text())
    frame = generate_events(rows or config["synthetic_rows"], seed=config["seed"])
    bodies = []
    for row in frame[list(EVENT_FIELDS)].to_dict("records"):
        opened = row["account_opened_at"]
        if opened is None or opened != opened:  # NaN: unknown, left out as a platform would
            del row["account_opened_at"]
        bodies.append(row)
    return bodies, float(split["parts"]["test"]["time_from"])


async def send(base_url: str, bodies: list[dict[str, Any]], senders: int, batch: int) -> list:
    shares: list[list[int]] = [[] for _ in range(senders)]
    for index, body in enumerate(bodies):
        shares[zlib.crc32(body["account_id"].encode()) % senders].append(index)
    answers: list[Any] = [None] * len(bodies)

    async def sender(share: list[int]) -> None:
        headers = {"X-API-Key": API_KEY}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
            for start in range(0, len(share), batch):
                chunk = share[start : start + batch]
                response = await client.post(
                    ROUTE, json={"events": [bodies[i] for i in chunk], "return_features": True}
                )
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                for i, answer in zip(chunk, response.json()["results"], strict=True):
                    answers[i] = answer

    await asyncio.gather(*(sender(share) for share in shares))
    return answers


def compare(
    bodies: list[dict[str, Any]],
    answers: list[Any],
    offline: np.ndarray,
    test_from: float,
    model_dir: Path,
) -> dict[str, Any]:
    test = np.array([b["timestamp"] >= test_from for b in bodies])
    online = np.array([[a["features"][name] for name in FEATURES] for a in answers])
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    direct = session.run(None, {"features": offline[test].astype(np.float32)})[0].reshape(-1)
    served = np.array([a["fraud_probability"] for a in answers])[test]
    differ = {
        name: int((online[test, j] != offline[test, j]).sum()) for j, name in enumerate(FEATURES)
    }
    return {
        "test_events": int(test.sum()),
        "features_differing": differ,
        "features_identical": not any(differ.values()),
        "max_feature_abs_diff": float(np.abs(online[test] - offline[test]).max()),
        "max_score_abs_diff": float(np.abs(served - direct).max()),
        "replayed_answers": int(sum(a["replayed"] for a in answers)),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("memory", "redis"), default="memory")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500, help="events per request")
    parser.add_argument("--rows", type=int, help="fewer events than the model's stream")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.store == "memory" and args.workers != 1:
        parser.error("the in-process store serves one worker; use --store redis")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = shipped_model_dir("mobile-money")
    began = time.perf_counter()
    bodies, test_from = stream(model_dir, args.rows)
    offline = features_over_history(event_from_mapping(b) for b in bodies)
    prepared = time.perf_counter() - began
    env = model_env(model_dir) | {"FRAUD_API_KEYS": API_KEY, "FRAUD_POLL_INTERVAL_S": "0"}
    python = SERVE_PYTHON if SERVE_PYTHON.exists() else None
    with redis_server() if args.store == "redis" else contextlib.nullcontext() as url:
        if url is not None:
            env["FRAUD_STATE_URL"] = url
        with uvicorn_server(SERVER_FACTORY, env, python=python, workers=args.workers) as server:
            started = time.perf_counter()
            answers = asyncio.run(
                send(f"http://127.0.0.1:{server.port}", bodies, args.senders, args.batch)
            )
            replayed_s = time.perf_counter() - started
    summary = {
        "model": str(model_dir.relative_to(model_dir.parent.parent.parent)),
        "store": args.store,
        "workers": args.workers,
        "events": len(bodies),
        "accounts": len({b["account_id"] for b in bodies}),
        "offline_s": round(prepared, 1),
        "replay_s": round(replayed_s, 1),
        "events_per_s": round(len(bodies) / replayed_s),
    } | compare(bodies, answers, offline, test_from, model_dir)
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    ok = summary["features_identical"] and summary["max_score_abs_diff"] <= 1e-6
    return 0 if ok and summary["replayed_answers"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
