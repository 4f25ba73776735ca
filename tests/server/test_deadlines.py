"""Request deadlines: a request that waited too long is answered 503 unscored."""

from __future__ import annotations

import asyncio
import contextvars
import math
import time

import httpx2
import numpy as np
import pytest

from server import deadlines
from server.app import create_app
from server.batching import LoopBatcher
from server.errors import BadRequest, DeadlineExceeded
from server.service import ScoringService
from server.settings import Settings
from server.thread_batcher import Batcher
from tests.server.fakes import FakeScorer
from tests.server.test_batch_endpoint import HEADERS, KEY, BlockingScorer
from tests.server.test_batching import GatedModel, row, settle


def test_the_callers_deadline_may_shorten_the_servers_but_not_lengthen_it() -> None:
    assert deadlines.deadline_of(10.0, 100, None) == pytest.approx(10.1)
    assert deadlines.deadline_of(10.0, 100, b"40") == pytest.approx(10.04)
    assert deadlines.deadline_of(10.0, 100, b"5000") == pytest.approx(10.1)
    assert deadlines.deadline_of(10.0, 0, None) == math.inf
    assert deadlines.deadline_of(10.0, 0, b"2.5") == pytest.approx(10.0025)


@pytest.mark.parametrize("value", [b"0", b"-5", b"soon", b"nan", b"inf", b""])
def test_a_deadline_header_that_is_not_a_positive_number_is_a_400(value: bytes) -> None:
    with pytest.raises(BadRequest, match="X-Request-Deadline-Ms"):
        deadlines.deadline_of(0.0, 100, value)


def within(ms: float) -> contextvars.Context:
    """A context whose request must reach the model within `ms` from now."""
    context = contextvars.copy_context()
    context.run(deadlines.due.set, time.perf_counter() + ms / 1000)
    return context


@pytest.mark.parametrize("runner", [Batcher, LoopBatcher])
def test_a_request_already_late_when_it_reaches_the_queue_is_refused_unscored(
    runner: type,
) -> None:
    async def scenario() -> None:
        seen: list[int] = []

        def model(rows: np.ndarray) -> np.ndarray:
            seen.append(len(rows))
            return rows.sum(axis=1)

        batcher = runner(model)
        batcher.start()
        late = asyncio.create_task(batcher.predict(row(1)), context=within(-1))
        with pytest.raises(DeadlineExceeded):
            await late
        fine = await asyncio.create_task(batcher.predict(row(2)), context=within(1000))
        batcher.close()
        assert float(fine[0]) == 6.0 and seen == [1]  # the late one never ran

    asyncio.run(scenario())


def test_a_request_whose_deadline_passes_in_the_queue_is_dropped_from_its_batch() -> None:
    async def scenario() -> None:
        model = GatedModel()
        batcher = Batcher(model, max_batch=64)
        batcher.start()
        first = asyncio.create_task(batcher.predict(row(0)))
        await settle()  # the thread holds the first row, blocked in the model
        short = asyncio.create_task(batcher.predict(row(1)), context=within(30))
        long = asyncio.create_task(batcher.predict(row(2)), context=within(5000))
        await settle()
        await asyncio.sleep(0.05)  # the short deadline passes while both wait
        model.release.set()
        results = await asyncio.gather(first, short, long, return_exceptions=True)
        batcher.close()
        assert isinstance(results[1], DeadlineExceeded)
        assert float(results[2][0]) == 6.0  # type: ignore[index]
        assert model.batches == [1, 1]  # the second run held only the request still in time

    asyncio.run(scenario())


def test_later_chunks_of_a_large_request_are_not_dropped_for_its_deadline() -> None:
    async def scenario() -> None:
        calls: list[int] = []

        def slow(rows: np.ndarray) -> np.ndarray:
            calls.append(len(rows))
            time.sleep(0.03)
            return rows.sum(axis=1)

        batcher = Batcher(slow, max_batch=4)
        batcher.start()
        rows = np.ones((12, 3), dtype=np.float32)
        # Three chunks of 30 ms against a 50 ms deadline: begun in time, so finished.
        scores = await asyncio.create_task(batcher.predict(rows), context=within(50))
        batcher.close()
        assert calls == [4, 4, 4] and scores.tolist() == [3.0] * 12

    asyncio.run(scenario())


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_over_http_a_queued_request_past_its_deadline_gets_503_deadline_exceeded() -> None:
    scorer = BlockingScorer()
    # The thread runner: a stuck model leaves the event loop free to answer.
    settings = Settings(api_keys=(KEY,), max_batch=1, inference_mode="thread")
    app = create_app(settings, scorer=scorer)

    async def scenario() -> tuple[list[httpx2.Response], str]:
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://t") as http:

                async def post(i: int, deadline: str | None) -> httpx2.Response:
                    headers = dict(HEADERS)
                    if deadline is not None:
                        headers["X-Request-Deadline-Ms"] = deadline
                    return await http.post(
                        "/v1/score", json={"features": [i / 10, 0, 0]}, headers=headers
                    )

                stuck = asyncio.create_task(post(1, None))  # holds the model
                await asyncio.sleep(0.05)
                # Behind it: one asks for 20 ms, one has the server's 100 ms.
                waiting = [asyncio.create_task(post(2, "20")), asyncio.create_task(post(3, None))]
                await asyncio.sleep(0.3)
                scorer.release.set()
                answers = [await stuck, *(await asyncio.gather(*waiting))]
                bad = await post(4, "later")
                text = (await http.get("/metrics")).text
                return [*answers, bad], text

    responses, text = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200, 503, 503, 400]
    for late in responses[1:3]:
        assert late.json()["error"]["code"] == "deadline_exceeded"
    assert responses[3].json()["error"]["field"] == "X-Request-Deadline-Ms"
    assert metric(text, "fraud_deadline_exceeded_total") == 2
    assert len(scorer.calls) == 1  # only the request that was in time reached the model


def test_a_full_queue_is_refused_before_the_body_is_read() -> None:
    scorer = BlockingScorer()
    settings = Settings(
        api_keys=(KEY,), max_queue=1, max_batch=1, inference_mode="thread", request_deadline_ms=0
    )
    app = create_app(settings, scorer=scorer)
    read: list[bool] = []

    async def scenario() -> int:
        async with app.router.lifespan_context(app):
            service: ScoringService = app.state.serving.ready_service()
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://t") as http:
                body = {"features": [0.1, 0, 0]}
                first = asyncio.create_task(http.post("/v1/score", json=body, headers=HEADERS))
                await asyncio.sleep(0.05)  # in the model
                second = asyncio.create_task(http.post("/v1/score", json=body, headers=HEADERS))
                await asyncio.sleep(0.05)  # in the queue, which is now full
                assert service.runner.queue_depth() == 1

                async def content() -> object:
                    read.append(True)
                    yield b'{"features": [0.1, 0, 0]}'

                shed = await http.post(
                    "/v1/score",
                    content=content(),  # type: ignore[arg-type]
                    headers={**HEADERS, "Content-Type": "application/json"},
                )
                scorer.release.set()
                await asyncio.gather(first, second)
                return shed.status_code

    assert asyncio.run(scenario()) == 503
    assert read == []  # the body was never asked for


def test_without_a_deadline_a_direct_call_is_never_refused() -> None:
    async def scenario() -> float:
        service = ScoringService(FakeScorer(), LoopBatcher(FakeScorer().predict))
        return float((await service.predict_rows(np.zeros((1, 3), np.float32)))[0])

    assert asyncio.run(scenario()) == 0.0
