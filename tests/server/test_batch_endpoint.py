"""POST /v1/score/batch, and load shedding seen over HTTP."""

from __future__ import annotations

import asyncio
import threading

import httpx2
import numpy as np
import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.server.fakes import FakeScorer

KEY = "batch-test-key-123456"
HEADERS = {"X-API-Key": KEY}


def client(scorer: FakeScorer | None = None, **settings: object) -> TestClient:
    app = create_app(Settings(api_keys=(KEY,), **settings), scorer=scorer or FakeScorer())  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


def test_results_come_back_in_order_in_one_model_call() -> None:
    scorer = FakeScorer()
    items = [{"transaction_id": f"t{i}", "features": [i / 10, 0, 0]} for i in range(10)]
    items[3] = {"features": {"amount": 0.95, "hour": 1, "distance": 2}}
    with client(scorer) as c:
        response = c.post("/v1/score/batch", json={"transactions": items}, headers=HEADERS)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["transaction_id"] for r in results] == [
        "t0",
        "t1",
        "t2",
        None,
        "t4",
        "t5",
        "t6",
        "t7",
        "t8",
        "t9",
    ]
    assert [r["decision"] for r in results][3:6] == ["DECLINE", "APPROVE", "REVIEW"]
    assert results[7]["fraud_probability"] == pytest.approx(0.7)
    # One run scores all ten; one more explains every answer but APPROVE (each row again and
    # with each of its three features occluded).
    explained = sum(r["decision"] != "APPROVE" for r in results)
    assert [len(call) for call in scorer.calls] == [10, explained * 4]


def test_batch_equals_single_scoring() -> None:
    rows = [[0.05, 1, 2], [0.6, 3, 4], [0.99, 5, 6]]
    with client() as c:
        singles = [c.post("/v1/score", json={"features": r}, headers=HEADERS).json() for r in rows]
        batch = c.post(
            "/v1/score/batch",
            json={"transactions": [{"features": r} for r in rows]},
            headers=HEADERS,
        ).json()["results"]
    assert batch == singles


@pytest.mark.parametrize(
    ("transactions", "field", "index"),
    [
        ([{"features": [0, 0, 0]}, {"features": [0, "x", 0]}], "transactions[1].features[1]", 1),
        ([{"features": [0, 0, 0]}] * 4 + [{"features": [0, 0]}], "transactions[4].features", 4),
        (
            [{"features": [0, 0, 0]}, {"features": [0, 0, 0], "extra": 1}],
            "transactions[1].extra",
            1,
        ),
        ([{"features": [0, 0, 0]}, [0, 0, 0]], "transactions[1]", 1),
        ([{"transaction_id": 5, "features": [0, 0, 0]}], "transactions[0].transaction_id", 0),
    ],
)
def test_an_invalid_item_rejects_the_request_naming_its_index(
    transactions: list[object], field: str, index: int
) -> None:
    scorer = FakeScorer()
    with client(scorer) as c:
        response = c.post("/v1/score/batch", json={"transactions": transactions}, headers=HEADERS)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"].startswith(f"transaction {index}: ")
    assert scorer.calls == []


@pytest.mark.parametrize(
    "body",
    [
        {"transactions": []},
        {"transactions": {"features": [0, 0, 0]}},
        {"items": []},
        {},
        [{"features": [0, 0, 0]}],
        {"transactions": None},
    ],
)
def test_malformed_batches_are_422(body: object) -> None:
    with client() as c:
        response = c.post("/v1/score/batch", json=body, headers=HEADERS)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_batch_size_and_body_limits() -> None:
    item = {"features": [0.1, 0, 0]}
    with client(max_batch_items=5, max_batch_body_bytes=600) as c:
        assert (
            c.post(
                "/v1/score/batch", json={"transactions": [item] * 5}, headers=HEADERS
            ).status_code
            == 200
        )
        too_many = c.post("/v1/score/batch", json={"transactions": [item] * 6}, headers=HEADERS)
        assert too_many.status_code == 422 and "1 to 5" in too_many.json()["error"]["message"]
        padded = {"transactions": [{"features": [0.1, 0, 0], "transaction_id": "x" * 120}] * 5}
        too_big = c.post("/v1/score/batch", json=padded, headers=HEADERS)
        assert too_big.status_code == 413


def test_batch_needs_a_key() -> None:
    with client() as c:
        response = c.post("/v1/score/batch", json={"transactions": [{"features": [0, 0, 0]}]})
    assert response.status_code == 401


class BlockingScorer(FakeScorer):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def predict(self, features: np.ndarray) -> np.ndarray:
        self.release.wait(timeout=5)
        return super().predict(features)


def test_a_full_queue_answers_503_at_once_not_a_hang() -> None:
    scorer = BlockingScorer()
    # The thread runner: a stuck model there leaves the event loop free to shed.
    # No deadline: the queued requests wait out the stuck model and are then served.
    settings = Settings(
        api_keys=(KEY,),
        max_queue=2,
        max_batch=1,
        inference_mode="thread",
        request_deadline_ms=0,
    )
    app = create_app(settings, scorer=scorer)

    async def scenario() -> list[httpx2.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://t") as http:

                async def post(i: int) -> httpx2.Response:
                    return await http.post(
                        "/v1/score", json={"features": [i / 10, 0, 0]}, headers=HEADERS
                    )

                # Two wait in the queue and perhaps one in the model; the rest are shed
                # while the model is still stuck.
                tasks = [asyncio.create_task(post(i)) for i in range(6)]
                done, _ = await asyncio.wait(tasks, timeout=2.0)
                shed = [t.result() for t in done]
                assert len(shed) in (3, 4) and all(r.status_code == 503 for r in shed)
                scorer.release.set()
                return list(await asyncio.gather(*tasks))

    responses = asyncio.run(scenario())
    statuses = [r.status_code for r in responses]
    assert statuses.count(503) in (3, 4) and statuses.count(200) == 6 - statuses.count(503)
    for response in responses:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            assert response.json()["error"]["code"] == "overloaded"


def test_a_large_batch_is_scored_in_chunks_and_answered_in_order() -> None:
    scorer = FakeScorer()
    items = [{"transaction_id": f"t{i}", "features": [(i % 100) / 100, 0, 0]} for i in range(1000)]
    # Reasons off: the chunks counted are the scoring's alone.
    with client(scorer, max_batch=64, reasons=0) as c:
        response = c.post("/v1/score/batch", json={"transactions": items}, headers=HEADERS)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["transaction_id"] for r in results] == [f"t{i}" for i in range(1000)]
    assert [r["fraud_probability"] for r in results] == pytest.approx(
        [(i % 100) / 100 for i in range(1000)]
    )
    assert [len(rows) for rows in scorer.calls] == [64] * 15 + [40]


def test_a_bad_item_late_in_a_large_batch_fails_it_before_anything_is_scored() -> None:
    scorer = FakeScorer()
    items = [{"features": [0.1, 0, 0]} for _ in range(1000)]
    items[700] = {"features": [0.1, "x", 0]}
    with client(scorer, max_batch=64) as c:
        response = c.post("/v1/score/batch", json={"transactions": items}, headers=HEADERS)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "transactions[700].features[1]"
    assert response.json()["error"]["message"].startswith("transaction 700:")
    assert scorer.calls == []  # validated whole before the first chunk ran
