"""Opportunistic micro-batching: concurrent requests share one session.run.

Two runners share one contract (`await runner.predict(rows)`) and one bounded
queue: a request that finds the queue full gets 503 at once.

- LoopBatcher (the default) gathers the requests that reach the model in one
  turn of the event loop and runs them together on the loop at its next turn.
  No thread, so no cross-thread wake-ups: on a 2-core VM each wake-up costs tens
  of microseconds, more than the model's own time per row in a batch.
- Batcher feeds one inference thread that, whenever free, takes everything
  waiting. onnxruntime releases the GIL inside `run`, so parsing overlaps with
  inference; this pays off with a heavier model or more cores.

Both put at most `max_batch` rows in one run, except that one request larger than
that (a /v1/score/batch of many transactions) runs whole, on its own; the queue
bound counts requests. An idle server answers a lone request at once and a busy
one amortises the model call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.errors import ModelFailure, NotReady, Overloaded

logger = logging.getLogger("uvicorn.error").getChild("fraud")

Predict = Callable[[np.ndarray], np.ndarray]


class Runner(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...

    def queue_depth(self) -> int: ...

    async def predict(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class _Job:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop


def run_model(predict: Predict, inputs: np.ndarray) -> np.ndarray:
    """One score per input row, or ModelFailure: a wrong shape would hand scores to the
    wrong requests, so it fails the batch like an exception does."""
    try:
        scores = np.asarray(predict(inputs)).reshape(-1)
        if len(scores) != len(inputs):
            raise ValueError(f"{len(scores)} scores for {len(inputs)} rows")
    except Exception as exc:
        logger.exception("the model failed on a batch of %d rows", len(inputs))
        raise ModelFailure("the model failed to score this request") from exc
    return scores


def shutting_down() -> NotReady:
    return NotReady("the server is shutting down", headers={"Retry-After": "1"})


class InlineRunner:
    """No queue, no thread: the model runs on the event loop. For comparison only."""

    def __init__(self, predict: Predict) -> None:
        self._predict = predict

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def queue_depth(self) -> int:
        return 0

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        return run_model(self._predict, rows)


class LoopBatcher:
    def __init__(
        self, predict: Predict, max_batch: int = 64, max_queue: int = 1024, max_delay_s: float = 0.0
    ) -> None:
        self._predict = predict
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self._pending: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._pending_rows = 0
        self._flush_handle: asyncio.Handle | None = None
        self._flush_is_timer = False  # uvloop's timer handles are no asyncio.TimerHandle
        self._closed = False
        self._ran_recently = False  # the model ran in this turn of the loop or the last

    def start(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(shutting_down())

    def queue_depth(self) -> int:
        return len(self._pending)

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        if self._closed:
            raise shutting_down()
        if len(self._pending) >= self.max_queue:
            raise Overloaded(
                "the server is at capacity; retry shortly", headers={"Retry-After": "1"}
            )
        loop = asyncio.get_running_loop()
        if not self._ran_recently and not self._pending and self.max_delay_s <= 0:
            # An idle server: answer now rather than wait a turn of the loop for
            # company (about 50 us here). Under load the model has always run in
            # the turn before, so at most the first request of a turn comes here.
            self._mark_run(loop)
            return run_model(self._predict, rows)
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((rows, future))
        self._pending_rows += len(rows)
        full = self._pending_rows >= self.max_batch
        if self._flush_handle is None:
            if full or self.max_delay_s <= 0:
                # call_soon runs after every task already made ready in this turn,
                # so the requests that arrived together reach the queue first.
                self._flush_handle = loop.call_soon(self._flush)
            else:
                self._flush_handle = loop.call_later(self.max_delay_s, self._flush)
                self._flush_is_timer = True
        elif full and self._flush_is_timer:
            self._flush_handle.cancel()  # a full batch does not wait out the delay
            self._flush_handle = loop.call_soon(self._flush)
            self._flush_is_timer = False
        return await future

    def _mark_run(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._ran_recently:
            self._ran_recently = True
            loop.call_soon(self._forget_run)

    def _forget_run(self) -> None:
        self._ran_recently = False

    def _flush(self) -> None:
        self._flush_handle = None
        self._flush_is_timer = False
        if not self._pending:
            return
        self._mark_run(asyncio.get_running_loop())
        batch = [self._pending.popleft()]
        rows = len(batch[0][0])
        while self._pending and rows + len(self._pending[0][0]) <= self.max_batch:
            batch.append(self._pending.popleft())
            rows += len(batch[-1][0])
        self._pending_rows -= rows
        if self._pending:  # more than one batch was waiting: the rest go next turn
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        try:
            inputs = batch[0][0] if len(batch) == 1 else np.concatenate([r for r, _ in batch])
            scores = run_model(self._predict, inputs)
        except Exception as exc:
            if not isinstance(exc, ModelFailure):
                logger.exception("could not assemble a batch of %d requests", len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(ModelFailure("the model failed to score this request"))
            return
        start = 0
        for job_rows, future in batch:
            if not future.done():  # a cancelled request (client gone) needs no answer
                future.set_result(scores[start : start + len(job_rows)])
            start += len(job_rows)


class Batcher:
    def __init__(
        self, predict: Predict, max_batch: int = 64, max_queue: int = 1024, max_delay_s: float = 0.0
    ) -> None:
        self._predict = predict
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self._pending: deque[_Job] = deque()
        self._pending_rows = 0
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop taking work; fail whatever still waits; let the running batch finish."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def queue_depth(self) -> int:
        return len(self._pending)

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        with self._wake:
            if self._closed:
                raise shutting_down()
            if len(self._pending) >= self.max_queue:
                # Shed load now rather than let every queued request grow late.
                raise Overloaded(
                    "the server is at capacity; retry shortly", headers={"Retry-After": "1"}
                )
            self._pending.append(_Job(rows, future, loop))
            self._pending_rows += len(rows)
            self._wake.notify()
        return await future

    def _take(self) -> list[_Job] | None:
        """Block until there is work; return up to max_batch rows of it (at least one job)."""
        with self._wake:
            while not self._pending and not self._closed:
                self._wake.wait()
            if self._closed:
                stranded = list(self._pending)
                self._pending.clear()
                _deliver(stranded, [shutting_down() for _ in stranded])
                return None
            if self.max_delay_s > 0 and self._pending_rows < self.max_batch:
                deadline = time.monotonic() + self.max_delay_s
                while self._pending_rows < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            jobs = [self._pending.popleft()]
            rows = len(jobs[0].rows)
            while self._pending and rows + len(self._pending[0].rows) <= self.max_batch:
                job = self._pending.popleft()
                jobs.append(job)
                rows += len(job.rows)
            self._pending_rows -= rows
            return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                rows = jobs[0].rows if len(jobs) == 1 else np.concatenate([j.rows for j in jobs])
                scores = run_model(self._predict, rows)
            except Exception as exc:
                # Nothing may escape: a dead inference thread would hang every later request.
                if not isinstance(exc, ModelFailure):
                    logger.exception("could not assemble a batch of %d requests", len(jobs))
                _deliver(
                    jobs, [ModelFailure("the model failed to score this request") for _ in jobs]
                )
                continue
            results: list[np.ndarray | BaseException] = []
            start = 0
            for job in jobs:
                results.append(scores[start : start + len(job.rows)])
                start += len(job.rows)
            _deliver(jobs, results)


def _deliver(jobs: list[_Job], results: list[np.ndarray | BaseException]) -> None:
    """One wake-up per event loop per batch, not one per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, np.ndarray | BaseException]]] = {}
    for job, result in zip(jobs, results, strict=True):
        by_loop.setdefault(job.loop, []).append((job, result))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(items: list[tuple[_Job, np.ndarray | BaseException]]) -> None:
    for job, result in items:
        if job.future.done():  # the client went away and its task was cancelled
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
