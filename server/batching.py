"""Opportunistic micro-batching: concurrent requests share one session.run.

Two runners share one contract (`await runner.predict(rows)`) and one bounded
queue: a request that finds the queue full gets 503 at once.

- LoopBatcher (the default) gathers the requests that reach the model in one
  turn of the event loop and runs them together on the loop at its next turn.
  No thread, so no cross-thread wake-ups: on a 2-core VM each wake-up costs tens
  of microseconds, more than the model's own time per row in a batch.
- Batcher (server/thread_batcher.py) feeds one inference thread that, whenever
  free, takes everything waiting. onnxruntime releases the GIL inside `run`, so
  parsing overlaps with inference; this pays off with a heavier model or more cores.

Both put at most `max_batch` rows in one run. A request larger than that (a
/v1/score/batch of many transactions) goes in chunks of `max_batch` rows, one after
the other, each queued only when the one before is done: the requests that arrive
meanwhile queue ahead of the next chunk, so a big batch delays them by one chunk's
run, not by the whole batch. The queue bound counts requests. An idle server
answers a lone request at once and a busy one amortises the model call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

import numpy as np

from server import deadlines
from server.errors import ModelFailure, NotReady, Overloaded
from server.metrics import Metrics

logger = logging.getLogger("uvicorn.error").getChild("fraud")

Predict = Callable[[np.ndarray], np.ndarray]


class Runner(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...

    def retire(self) -> None:
        """Take no new work, finish what is queued, then stop: a version swapped out."""
        ...

    def queue_depth(self) -> int: ...

    def check_capacity(self) -> None:
        """Overloaded (counted) if a request now would be shed: asked before a body is read,
        so that shedding costs a fraction of serving."""
        ...

    async def predict(self, rows: np.ndarray, accepted: bool = False) -> np.ndarray:
        """`accepted`: the request chose this runner before an await, so a retire since
        then lets it finish here (see BoundedQueue.predict)."""
        ...


@dataclass(frozen=True)
class Job:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    queued: float  # perf_counter() when admitted
    due: float  # perf_counter() by which its batch must start (server/deadlines.py)


def observe_run(metrics: Metrics | None, jobs: list[Job], started: float, finished: float) -> None:
    """Queue wait per request, inference time and rows per run. On the event loop only."""
    if metrics is None:
        return
    if len(jobs) == 1:  # the common case when load is light: no generator, no loop
        metrics.stages["queue"].observe(started - jobs[0].queued)
        metrics.batch_rows.observe(len(jobs[0].rows))
    else:
        metrics.stages["queue"].observe_many([started - job.queued for job in jobs])
        metrics.batch_rows.observe(sum(len(job.rows) for job in jobs))
    metrics.stages["inference"].observe(finished - started)


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

    def __init__(self, predict: Predict, metrics: Metrics | None = None) -> None:
        self._predict = predict
        self.metrics = metrics

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def retire(self) -> None:
        pass

    def queue_depth(self) -> int:
        return 0

    def check_capacity(self) -> None:
        pass

    async def predict(self, rows: np.ndarray, accepted: bool = False) -> np.ndarray:
        check_deadline(self.metrics)
        return run_alone(self._predict, rows, self.metrics)


def check_deadline(metrics: Metrics | None) -> None:
    """DeadlineExceeded, counted, if the current request's deadline has passed."""
    if time.perf_counter() > deadlines.due.get():
        if metrics is not None:
            metrics.expired += 1
        raise deadlines.expired()


def run_alone(predict: Predict, rows: np.ndarray, metrics: Metrics | None) -> np.ndarray:
    """One request's own model run, with no wait in a queue."""
    if metrics is None:
        return run_model(predict, rows)
    started = perf_counter()
    scores = run_model(predict, rows)
    metrics.stages["inference"].observe(perf_counter() - started)
    metrics.stages["queue"].observe(0.0)
    metrics.batch_rows.observe(len(rows))
    return scores


class BoundedQueue:
    """What both batchers share: the bounds, the waiting jobs, and taking a batch of them."""

    def __init__(
        self,
        predict: Predict,
        max_batch: int = 64,
        max_queue: int = 1024,
        max_delay_s: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._predict = predict
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self._pending: deque[Job] = deque()
        self._pending_rows = 0
        self._closed = False  # closed: nothing more is taken
        self._retired = False  # retired: only what was accepted is taken (see predict)
        self._chunking = 0  # requests now going through in chunks
        self._setup()

    def _setup(self) -> None:
        """A subclass's own state, made at the end of __init__."""

    def queue_depth(self) -> int:
        return len(self._pending)

    async def predict(self, rows: np.ndarray, accepted: bool = False) -> np.ndarray:
        """A retired runner (a version swapped out) still takes `accepted` requests, and
        every chunk after a request's first: what it began, it finishes. Only a closed one
        refuses them. Later chunks skip the queue bound too, so that a request is shed
        whole or not at all."""
        if len(rows) <= self.max_batch:
            return await self._predict_rows(rows, accepted, bounded=True)
        # One chunk in the queue at a time: see the module's docstring.
        step = self.max_batch
        self._chunking += 1
        try:
            parts = [
                await self._predict_rows(rows[i : i + step], accepted or i > 0, bounded=i == 0)
                for i in range(0, len(rows), step)
            ]
        finally:
            self._chunking -= 1
            self._chunked_done()
        return np.concatenate(parts)

    async def _predict_rows(self, rows: np.ndarray, accepted: bool, bounded: bool) -> np.ndarray:
        """At most max_batch rows through the runner's queue."""
        raise NotImplementedError

    def _chunked_done(self) -> None:
        """A chunked request is over: a runner waiting to stop may look again."""

    def _admit(
        self, rows: np.ndarray, loop: asyncio.AbstractEventLoop, accepted: bool, bounded: bool
    ) -> Job:
        if self._closed or (self._retired and not accepted):
            raise shutting_down()
        now = time.perf_counter()
        # A chunk after a request's first is exempt: what was begun is finished.
        due = deadlines.due.get() if bounded else math.inf
        if now > due:
            if self.metrics is not None:
                self.metrics.expired += 1
            raise deadlines.expired()
        if bounded:
            self.check_capacity()
        job = Job(rows, loop.create_future(), loop, now, due)
        self._pending.append(job)
        self._pending_rows += len(rows)
        return job

    def check_capacity(self) -> None:
        if len(self._pending) >= self.max_queue:
            if self.metrics is not None:
                self.metrics.shed += 1
            # Shed load now rather than let every queued request grow late.
            raise Overloaded(
                "the server is at capacity; retry shortly", headers={"Retry-After": "1"}
            )

    def _take_batch(self) -> tuple[list[Job], list[Job]]:
        """The oldest jobs still within their deadline, up to max_batch rows, and the jobs
        passed over because their deadline has gone: (batch, expired). The batch is empty
        only when every waiting job had expired."""
        now = time.perf_counter()
        jobs: list[Job] = []
        late: list[Job] = []
        rows = 0
        while self._pending:
            job = self._pending[0]
            if now > job.due:
                late.append(self._pending.popleft())
                self._pending_rows -= len(job.rows)
                continue
            if jobs and rows + len(job.rows) > self.max_batch:
                break
            jobs.append(self._pending.popleft())
            rows += len(job.rows)
        self._pending_rows -= rows
        if late and self.metrics is not None and self._counts_on_loop:
            self.metrics.expired += len(late)
        return jobs, late

    # Whether _take_batch runs on the event loop, where the tallies may be touched.
    _counts_on_loop = True


class LoopBatcher(BoundedQueue):
    def _setup(self) -> None:
        self._flush_handle: asyncio.Handle | None = None
        self._flush_is_timer = False  # uvloop's timer handles are no asyncio.TimerHandle
        self._ran_recently = False  # the model ran in this turn of the loop or the last

    def start(self) -> None:
        pass

    def retire(self) -> None:
        # The flush already scheduled still runs and answers everything queued.
        self._retired = True

    def close(self) -> None:
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        while self._pending:
            future = self._pending.popleft().future
            if not future.done():
                future.set_exception(shutting_down())

    async def _predict_rows(self, rows: np.ndarray, accepted: bool, bounded: bool) -> np.ndarray:
        loop = asyncio.get_running_loop()
        idle = not (self._ran_recently or self._pending or self.max_delay_s > 0)
        if idle and not (self._closed or self._retired):
            # An idle server: answer now rather than wait a turn of the loop for
            # company (about 50 us here). Under load the model has always run in
            # the turn before, so at most the first request of a turn comes here.
            check_deadline(self.metrics)
            self._mark_run(loop)
            return run_alone(self._predict, rows, self.metrics)
        job = self._admit(rows, loop, accepted, bounded)
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
        return await job.future

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
        loop = asyncio.get_running_loop()
        self._mark_run(loop)
        batch, late = self._take_batch()
        if self._pending:  # more than one batch was waiting: the rest go next turn
            self._flush_handle = loop.call_soon(self._flush)
        for job in late:
            if not job.future.done():
                job.future.set_exception(deadlines.expired())
        if not batch:
            return
        started = time.perf_counter()
        results = score_batch(self._predict, batch)
        observe_run(self.metrics, batch, started, time.perf_counter())
        for job, result in zip(batch, results, strict=True):
            if job.future.done():  # a cancelled request (client gone) needs no answer
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)


def score_batch(predict: Predict, jobs: list[Job]) -> list[np.ndarray | BaseException]:
    """Each job's slice of one model run, or for every job the error that failed it.

    Nothing may escape: on the loop a lost error would leave requests waiting for
    ever, and on the inference thread it would end the thread.
    """
    try:
        inputs = jobs[0].rows if len(jobs) == 1 else np.concatenate([j.rows for j in jobs])
        scores = run_model(predict, inputs)
    except Exception as exc:
        if not isinstance(exc, ModelFailure):
            logger.exception("could not assemble a batch of %d requests", len(jobs))
        return [ModelFailure("the model failed to score this request") for _ in jobs]
    results: list[np.ndarray | BaseException] = []
    start = 0
    for job in jobs:
        results.append(scores[start : start + len(job.rows)])
        start += len(job.rows)
    return results
