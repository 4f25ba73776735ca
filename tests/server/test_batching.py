"""The batcher alone: coalescing, bounds, shedding, failure isolation, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from server.batching import LoopBatcher
from server.errors import ModelFailure, NotReady, Overloaded
from server.thread_batcher import Batcher


class GatedModel:
    """Sums each row; the first call waits for `release` so work piles up behind it."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.release = threading.Event()
        self.batches: list[int] = []
        self.fail_on = fail_on

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if not self.batches:
            self.release.wait(timeout=5)
        self.batches.append(len(rows))
        if self.fail_on is not None and np.any(rows == self.fail_on):
            raise RuntimeError("poisoned row")
        return rows.sum(axis=1)


def row(value: float) -> np.ndarray:
    return np.full((1, 3), value, dtype=np.float32)


async def settle() -> None:
    """Let submitted coroutines reach the queue."""
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_waiting_requests_share_one_run_and_get_their_own_answers() -> None:
    async def scenario() -> None:
        model = GatedModel()
        batcher = Batcher(model, max_batch=64)
        batcher.start()
        first = asyncio.create_task(batcher.predict(row(0)))
        await settle()  # the thread now holds the first row, blocked in the model
        rest = [asyncio.create_task(batcher.predict(row(i))) for i in range(1, 11)]
        await settle()
        assert batcher.queue_depth() == 10
        model.release.set()
        results = await asyncio.gather(first, *rest)
        batcher.close()
        assert model.batches == [1, 10]
        assert [float(r[0]) for r in results] == [3.0 * i for i in range(11)]

    asyncio.run(scenario())


def test_batches_never_exceed_max_batch() -> None:
    async def scenario() -> None:
        model = GatedModel()
        batcher = Batcher(model, max_batch=4)
        batcher.start()
        first = asyncio.create_task(batcher.predict(row(0)))
        await settle()
        rest = [asyncio.create_task(batcher.predict(row(i))) for i in range(1, 11)]
        await settle()
        model.release.set()
        await asyncio.gather(first, *rest)
        batcher.close()
        assert model.batches == [1, 4, 4, 2]

    asyncio.run(scenario())


@pytest.mark.parametrize("runner", [Batcher, LoopBatcher])
def test_a_large_request_runs_in_chunks_of_max_batch(runner: type) -> None:
    async def scenario() -> None:
        model = GatedModel()
        model.release.set()
        batcher = runner(model, max_batch=4)
        batcher.start()
        rows = np.arange(30, dtype=np.float32).reshape(10, 3)
        result = await batcher.predict(rows)
        batcher.close()
        assert model.batches == [4, 4, 2]
        assert result.tolist() == rows.sum(axis=1).tolist()  # in order, every row

    asyncio.run(scenario())


@pytest.mark.parametrize("runner", [Batcher, LoopBatcher])
def test_requests_arriving_during_a_large_one_run_between_its_chunks(runner: type) -> None:
    """Singles sent while a 40-row request is under way wait one chunk, not all ten."""

    class Recording:
        def __init__(self) -> None:
            self.runs: list[list[float]] = []

        def __call__(self, rows: np.ndarray) -> np.ndarray:
            self.runs.append(rows[:, 0].tolist())
            time.sleep(0.002)  # a model run that takes time, for singles to arrive in
            return rows.sum(axis=1)

    async def scenario() -> None:
        model = Recording()
        batcher = runner(model, max_batch=4)
        batcher.start()
        big = asyncio.create_task(batcher.predict(np.ones((40, 3), dtype=np.float32)))
        await asyncio.sleep(0)  # the big request is under way
        singles = []
        for i in range(3):
            singles.append(asyncio.create_task(batcher.predict(row(100 + i))))
            await asyncio.sleep(0.003)
        await asyncio.gather(big, *singles)
        batcher.close()
        chunks = [i for i, run in enumerate(model.runs) if run == [1.0] * len(run)]
        assert sum(len(model.runs[i]) for i in chunks) == 40
        # Each single ran before the big request's last chunk, in a run of singles (a full
        # chunk leaves no room beside it).
        for i in range(3):
            where = next(n for n, run in enumerate(model.runs) if 100.0 + i in run)
            assert where < chunks[-1] and min(model.runs[where]) >= 100.0

    asyncio.run(scenario())


def test_full_queue_sheds_at_once() -> None:
    async def scenario() -> None:
        model = GatedModel()
        batcher = Batcher(model, max_batch=64, max_queue=3)
        batcher.start()
        first = asyncio.create_task(batcher.predict(row(0)))
        await settle()
        queued = [asyncio.create_task(batcher.predict(row(i))) for i in range(3)]
        await settle()
        with pytest.raises(Overloaded) as shed:
            await asyncio.wait_for(batcher.predict(row(9)), timeout=0.5)
        assert shed.value.status_code == 503 and shed.value.headers["Retry-After"] == "1"
        model.release.set()
        await asyncio.gather(first, *queued)  # the queued ones are still served
        batcher.close()

    asyncio.run(scenario())


def test_a_failing_batch_fails_only_its_own_waiters() -> None:
    async def scenario() -> None:
        model = GatedModel(fail_on=7.0)
        batcher = Batcher(model, max_batch=2)
        batcher.start()
        first = asyncio.create_task(batcher.predict(row(0)))
        await settle()
        tasks = [asyncio.create_task(batcher.predict(row(v))) for v in (1, 7, 2, 3)]
        await settle()
        model.release.set()
        results = await asyncio.gather(first, *tasks, return_exceptions=True)
        batcher.close()
        assert model.batches == [1, 2, 2]
        assert isinstance(results[1], ModelFailure) and isinstance(results[2], ModelFailure)
        assert results[1] is not results[2]
        assert [float(r[0]) for r in (results[0], results[3], results[4])] == [0.0, 6.0, 9.0]
        assert "poisoned" not in results[1].message

    asyncio.run(scenario())


def test_queue_delay_gathers_a_fuller_batch() -> None:
    async def scenario() -> None:
        model = GatedModel()
        model.release.set()
        batcher = Batcher(model, max_batch=4, max_delay_s=0.5)
        batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(batcher.predict(row(i)) for i in range(4)))
        batcher.close()
        assert model.batches == [4]  # waited for company instead of running one row
        assert loop.time() - started < 0.5  # and stopped waiting once the batch was full
        assert len(results) == 4

    asyncio.run(scenario())


def test_close_fails_the_waiting_and_refuses_new_work() -> None:
    async def scenario() -> None:
        model = GatedModel()
        batcher = Batcher(model, max_batch=1)
        batcher.start()
        first = asyncio.create_task(batcher.predict(row(0)))
        await settle()
        waiting = asyncio.create_task(batcher.predict(row(1)))
        await settle()
        closer = asyncio.get_running_loop().run_in_executor(None, batcher.close)
        await settle()
        model.release.set()
        await closer
        assert float((await first)[0]) == 0.0  # the running batch finished
        with pytest.raises(NotReady):
            await waiting
        with pytest.raises(NotReady):
            await batcher.predict(row(2))

    asyncio.run(scenario())


class CountingModel:
    def __init__(self, fail_on: float | None = None) -> None:
        self.batches: list[int] = []
        self.fail_on = fail_on

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.batches.append(len(rows))
        if self.fail_on is not None and np.any(rows == self.fail_on):
            raise RuntimeError("poisoned row")
        return rows.sum(axis=1)


def test_loop_batcher_coalesces_one_turn_of_requests() -> None:
    async def scenario() -> None:
        model = CountingModel()
        batcher = LoopBatcher(model, max_batch=4)
        results = await asyncio.gather(*(batcher.predict(row(i)) for i in range(10)))
        # The first finds the server idle and runs at once; the rest of the turn waits
        # for the next one and shares runs of at most four rows.
        assert model.batches == [1, 4, 4, 1]
        assert [float(r[0]) for r in results] == [3.0 * i for i in range(10)]
        alone = await batcher.predict(row(5))  # an idle server: the next turn, alone
        assert model.batches[-1] == 1 and float(alone[0]) == 15.0

    asyncio.run(scenario())


def test_loop_batcher_sheds_beyond_its_queue() -> None:
    async def scenario() -> None:
        model = CountingModel()
        batcher = LoopBatcher(model, max_batch=64, max_queue=3)
        results = await asyncio.gather(
            *(batcher.predict(row(i)) for i in range(5)), return_exceptions=True
        )
        assert [type(r).__name__ for r in results] == [
            "ndarray",
            "ndarray",
            "ndarray",
            "ndarray",
            "Overloaded",
        ]
        assert model.batches == [1, 3]  # one ran at once, three queued, one shed

    asyncio.run(scenario())


def test_loop_batcher_failure_stays_in_its_batch() -> None:
    async def scenario() -> None:
        model = CountingModel(fail_on=7.0)
        batcher = LoopBatcher(model, max_batch=2)
        results = await asyncio.gather(
            *(batcher.predict(row(v)) for v in (1, 7, 2, 3)), return_exceptions=True
        )
        assert model.batches == [1, 2, 1]
        assert isinstance(results[1], ModelFailure) and isinstance(results[2], ModelFailure)
        assert [float(results[0][0]), float(results[3][0])] == [3.0, 9.0]

    asyncio.run(scenario())


def test_loop_batcher_delay_and_close() -> None:
    async def scenario() -> None:
        model = CountingModel()
        batcher = LoopBatcher(model, max_batch=3, max_delay_s=0.05)
        first = asyncio.create_task(batcher.predict(row(1)))
        await asyncio.sleep(0.01)
        assert model.batches == []  # waiting for company, up to 50 ms
        await asyncio.gather(first, batcher.predict(row(2)), batcher.predict(row(3)))
        assert model.batches == [3]  # a full batch did not wait out the delay
        waiting = asyncio.create_task(batcher.predict(row(4)))
        await asyncio.sleep(0)
        batcher.close()
        with pytest.raises(NotReady):
            await waiting
        with pytest.raises(NotReady):
            await batcher.predict(row(5))

    asyncio.run(scenario())


def test_loop_batcher_under_uvloop_does_not_wait_out_the_delay_when_full() -> None:
    import uvloop

    async def scenario() -> float:
        batcher = LoopBatcher(CountingModel(), max_batch=3, max_delay_s=0.5)
        started = time.perf_counter()
        await asyncio.gather(*(batcher.predict(row(i)) for i in range(3)))
        return time.perf_counter() - started

    assert uvloop.run(scenario()) < 0.25
    assert asyncio.run(scenario()) < 0.25


def test_multi_row_requests_get_their_own_slices() -> None:
    async def scenario() -> None:
        model = CountingModel()
        batcher = LoopBatcher(model, max_batch=64)
        sizes = (2, 1, 3, 1)
        jobs = [np.full((n, 3), float(i), dtype=np.float32) for i, n in enumerate(sizes)]
        await batcher.predict(row(0))  # make the next turn's requests queue together
        results = await asyncio.gather(*(batcher.predict(j) for j in jobs))
        assert [r.tolist() for r in results] == [[3.0 * i] * n for i, n in enumerate(sizes)]

    asyncio.run(scenario())


def wrong_shape(rows: np.ndarray) -> np.ndarray:
    return np.repeat(rows.sum(axis=1), 2)  # two scores per row: would shift every answer


@pytest.mark.parametrize("runner", ["loop", "thread", "inline"])
def test_a_wrong_shaped_answer_fails_the_batch_and_the_runner_lives_on(runner: str) -> None:
    from server.batching import InlineRunner

    async def scenario() -> None:
        calls: list[int] = []

        def model(rows: np.ndarray) -> np.ndarray:
            calls.append(len(rows))
            return wrong_shape(rows) if len(calls) == 1 else rows.sum(axis=1)

        batching = {"loop": LoopBatcher, "thread": Batcher}
        batcher = batching[runner](model) if runner in batching else InlineRunner(model)
        batcher.start()
        with pytest.raises(ModelFailure):
            await asyncio.wait_for(batcher.predict(row(1)), timeout=2)
        again = await asyncio.wait_for(batcher.predict(row(2)), timeout=2)
        batcher.close()
        assert float(again[0]) == 6.0

    asyncio.run(scenario())


def slow_model(rows: np.ndarray) -> np.ndarray:
    """Sums each row, 2 ms a run: time for a test to act between chunks."""
    time.sleep(0.002)
    return rows.sum(axis=1)


@pytest.mark.parametrize("runner", [Batcher, LoopBatcher])
def test_a_chunked_request_under_way_finishes_on_a_retired_runner(runner: type) -> None:
    """A version swapped out mid-request finishes what it began; new requests are refused."""

    async def scenario() -> None:
        batcher = runner(slow_model, max_batch=4, max_queue=2)
        batcher.start()
        rows = np.ones((40, 3), dtype=np.float32)
        big = asyncio.create_task(batcher.predict(rows))
        await asyncio.sleep(0.005)  # a chunk or two in
        batcher.retire()
        with pytest.raises(NotReady):
            await batcher.predict(row(1))
        # Chosen before the swap, so taken; the later chunks pass the retire as well.
        accepted = await batcher.predict(row(2), accepted=True)
        result = await big
        batcher.close()
        assert result.tolist() == [3.0] * 40 and float(accepted[0]) == 6.0

    asyncio.run(scenario())


def test_a_retired_thread_runner_that_has_stopped_refuses_even_accepted_work() -> None:
    async def scenario() -> None:
        batcher = Batcher(GatedModel(), max_batch=4)
        batcher.start()
        batcher.retire()
        batcher._thread.join(timeout=5)  # nothing queued: it stops
        with pytest.raises(NotReady):
            await asyncio.wait_for(batcher.predict(row(1), accepted=True), 5)
        batcher.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("runner", [Batcher, LoopBatcher])
def test_a_closed_runner_fails_the_rest_of_a_chunked_request(runner: type) -> None:
    async def scenario() -> None:
        batcher = runner(slow_model, max_batch=4)
        batcher.start()
        big = asyncio.create_task(batcher.predict(np.ones((400, 3), dtype=np.float32)))
        await asyncio.sleep(0.01)
        batcher.close()
        with pytest.raises(NotReady):
            await big

    asyncio.run(scenario())
