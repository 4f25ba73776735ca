"""Raw events through a real uvicorn serving the shipped mobile-money model, with the
in-process store (one worker) and with a real Redis shared by two workers:

- replay parity: a generated history sent in time order gives every event the features the
  offline fold computes, and the scores onnxruntime gives those features directly;
- concurrency: 500 events of one account from 16 connections are all counted, once;
- restart: a clean stop keeps the state (snapshot); a crash loses what came after the last
  periodic snapshot, and only that.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import onnxruntime as ort
import pytest

from features.events import DEFINITIONS, EVENT_FIELDS, FEATURES, features_over_history
from features.reading import event_from_mapping
from tests.conftest import ROOT, TEST_API_KEY, LiveServer, flush_redis, start_server, stop_server

HEADERS = {"X-API-Key": TEST_API_KEY}
MODEL_ROOT = ROOT / "models" / "mobile-money"
ROUTE = "/v1/models/mobile-money/events/score"
SENDERS = 4  # concurrent callers, each owning a share of the accounts
BATCH = 100  # events per request in the replay
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
COUNTS_AND_FLAGS = ("new_device", "txns_last_hour", "new_payee", "is_cash_out", "hour", "amount")


def shipped_version() -> Path:
    return max((p for p in MODEL_ROOT.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def serve(tmp_path: Path, env: dict[str, str], workers: int = 1) -> LiveServer:
    args = ("--workers", str(workers)) if workers > 1 else ()
    env = {"FRAUD_POLL_INTERVAL_S": "0"} | env
    return start_server(shipped_version(), tmp_path / "uvicorn.log", env, extra_args=args)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, str], int]]:
    """(server environment, workers) for each store."""
    if request.param == "memory":
        yield {}, 1
        return
    url = request.getfixturevalue("redis_url")
    flush_redis(url)
    yield {"FRAUD_STATE_URL": url}, 2
    flush_redis(url)


def history(events: int = 12_000, seed: int = 5) -> list[dict[str, Any]]:
    """A generated event stream (the training generator's, another seed), in time order, as
    JSON bodies; an unknown opening date is left out, as a platform would."""
    from training.synthetic import generate_events

    frame = generate_events(events, seed=seed)
    bodies = []
    for row in frame.to_dict("records"):
        body = {key: row[key] for key in EVENT_FIELDS}
        opened = body["account_opened_at"]
        if opened is None or opened != opened:  # NaN
            del body["account_opened_at"]
        bodies.append(body)
    return bodies


async def send_in_batches(
    base_url: str, bodies: list[dict[str, Any]], route: str = ROUTE + "/batch"
) -> list[dict[str, Any]]:
    """Every body, each account's in order: SENDERS callers on their own connections, each
    owning the accounts that hash to it, sending BATCH at a time and waiting for the answer."""
    shares: list[list[int]] = [[] for _ in range(SENDERS)]
    for index, body in enumerate(bodies):
        shares[hash(body["account_id"]) % SENDERS].append(index)
    answers: list[dict[str, Any] | None] = [None] * len(bodies)

    async def sender(share: list[int]) -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, timeout=30) as client:
            for start in range(0, len(share), BATCH):
                chunk = share[start : start + BATCH]
                response = await client.post(
                    route,
                    json={"events": [bodies[i] for i in chunk], "return_features": True},
                )
                assert response.status_code == 200, response.text
                for i, answer in zip(chunk, response.json()["results"], strict=True):
                    answers[i] = answer

    await asyncio.gather(*(sender(share) for share in shares))
    return [a for a in answers if a is not None]


def test_the_shipped_model_takes_events() -> None:
    from server.artifact import read_model_bytes

    data, _ = read_model_bytes(shipped_version())
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["feature_definitions"] == DEFINITIONS
    assert tuple(__import__("json").loads(meta["feature_names"])) == FEATURES


def test_a_replayed_history_gets_the_offline_features_and_scores(
    store: tuple[dict[str, str], int], tmp_path: Path
) -> None:
    env, workers = store
    bodies = history()
    offline = features_over_history(event_from_mapping(b) for b in bodies)
    # A replay is bulk work with no caller waiting on each answer: no deadline, so that
    # a batch slowed by the shared machine is not refused and every event is answered.
    server = serve(tmp_path, {**env, "FRAUD_REQUEST_DEADLINE_MS": "0"}, workers)
    try:
        answers = asyncio.run(send_in_batches(server.base_url, bodies))
    finally:
        stop_server(server)
    assert [a["event_id"] for a in answers] == [b["event_id"] for b in bodies]
    online = np.array([[a["features"][name] for name in FEATURES] for a in answers])
    for j, name in enumerate(FEATURES):
        if name in COUNTS_AND_FLAGS:
            assert np.array_equal(online[:, j], offline[:, j]), name
        else:
            np.testing.assert_allclose(online[:, j], offline[:, j], rtol=1e-6, atol=0, err_msg=name)
    assert not any(a["replayed"] for a in answers)
    # The same scores as the model gives the offline features directly.
    from server.artifact import read_model_bytes

    data, _ = read_model_bytes(shipped_version())
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    direct = session.run(None, {"features": offline.astype(np.float32)})[0].reshape(-1)
    served = np.array([a["fraud_probability"] for a in answers])
    assert np.max(np.abs(served - direct)) <= 1e-6
    # The history is a real one: accounts come back, devices repeat, the hour fills up.
    assert offline[:, FEATURES.index("new_device")].mean() < 0.5
    assert offline[:, FEATURES.index("txns_last_hour")].max() >= 3


def one_account(n: int, **changes: Any) -> dict[str, Any]:
    body = {
        "event_id": f"storm-{n}",
        "account_id": "acct-storm",
        "timestamp": T0 + 86_400 * 60 + 3.0 * n,  # 500 events within 25 minutes
        "type": "transfer",
        "amount": 10.0 + n % 7,
        "balance_before": 5_000.0,
        "payee_id": f"payee-{n % 5}",
        "device_id": "phone-1",
        "lat": -1.29,
        "lon": 36.82,
    }
    return body | changes


async def storm(base_url: str, count: int, connections: int) -> list[int]:
    """`count` events of one account, sent at once over `connections` connections."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(
        base_url=base_url, headers=HEADERS, timeout=30, limits=limits
    ) as client:
        responses = await asyncio.gather(
            *(client.post(ROUTE, json=one_account(n)) for n in range(count))
        )
    return [r.status_code for r in responses]


def test_concurrent_events_of_one_account_are_all_counted_once(
    store: tuple[dict[str, str], int], tmp_path: Path
) -> None:
    env, workers = store
    server = serve(tmp_path, env, workers)
    try:
        statuses = asyncio.run(storm(server.base_url, 500, 16))
        with server.client(headers=HEADERS) as client:
            following = one_account(500, return_features=True)
            first = client.post(ROUTE, json=following).json()
            again = client.post(ROUTE, json=following).json()  # a retried delivery
            last = client.post(ROUTE, json=one_account(501, return_features=True)).json()
    finally:
        stop_server(server)
    assert statuses == [200] * 500
    assert first["features"]["txns_last_hour"] == 500
    assert first["replayed"] is False
    assert again["replayed"] is True
    assert last["features"]["txns_last_hour"] == 501  # the retry was not counted
    assert last["features"]["new_payee"] == 0.0


def test_a_clean_restart_keeps_the_state_and_a_crash_loses_only_the_last_interval(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "state" / "accounts.json"
    env = {"FRAUD_STATE_SNAPSHOT": str(snapshot), "FRAUD_STATE_SNAPSHOT_INTERVAL_S": "1"}

    def send(server: LiveServer, numbers: range) -> dict[str, Any]:
        with server.client(headers=HEADERS) as client:
            for n in numbers:
                answer = client.post(ROUTE, json=one_account(n, return_features=True))
                assert answer.status_code == 200, answer.text
        return answer.json()

    server = serve(tmp_path, env)
    try:
        send(server, range(10))
    finally:
        stop_server(server)  # SIGTERM: a clean stop writes the snapshot
    server = serve(tmp_path, env)
    try:
        assert send(server, range(10, 11))["features"]["txns_last_hour"] == 10
        # Wait for an interval snapshot (it holds events 0-10), then 5 more and a crash.
        written = snapshot.stat().st_mtime_ns
        for _ in range(50):
            if snapshot.stat().st_mtime_ns != written:
                break
            asyncio.run(asyncio.sleep(0.1))
        assert snapshot.stat().st_mtime_ns != written
        send(server, range(11, 16))
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    finally:
        stop_server(server)
    server = serve(tmp_path, env)
    try:
        after = send(server, range(16, 17))["features"]["txns_last_hour"]
    finally:
        stop_server(server)
    # Events 11-15 came after the last snapshot: the crash lost them, and nothing else.
    assert after == 11


def test_the_readme_examples_answer_as_the_readme_says(tmp_path: Path) -> None:
    import json

    history = json.loads((ROOT / "examples" / "mobile-money-history.json").read_text())
    single = json.loads((ROOT / "examples" / "mobile-money-event.json").read_text())
    server = serve(tmp_path, {})
    try:
        with server.client(headers=HEADERS) as client:
            first = client.post(ROUTE + "/batch", json=history)
            again = client.post(ROUTE + "/batch", json=history)
            alone = client.post(ROUTE, json=single)
    finally:
        stop_server(server)
    assert first.status_code == again.status_code == alone.status_code == 200
    decisions = [r["decision"] for r in first.json()["results"]]
    assert decisions == ["APPROVE"] * 6 + ["DECLINE"]
    assert all(r["replayed"] for r in again.json()["results"])
    readme = (ROOT / "README.md").read_text()
    last = first.json()["results"][-1]
    assert f'"fraud_probability":{last["fraud_probability"]}' in readme
    assert alone.json()["event_id"] == single["event_id"]
