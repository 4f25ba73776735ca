"""Opportunistic micro-batching: concurrent requests share one session.run.

A bounded queue feeds one inference thread. Whenever the thread is free it takes
everything waiting, up to `max_batch` rows, so an idle server answers a lone
request at once and a busy one amortises the model call. onnxruntime releases
the GIL inside `run`, so the event loop keeps parsing while the model works.
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

import numpy as np

from server.errors import ModelFailure, NotReady, Overloaded

logger = logging.getLogger("uvicorn.error").getChild("fraud")

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Job:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop


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
        try:
            return self._predict(rows)
        except Exception as exc:
            logger.exception("the model failed on %d rows", len(rows))
            raise ModelFailure("the model failed to score this request") from exc


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
                raise NotReady("the server is shutting down", headers={"Retry-After": "1"})
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
                _deliver(stranded, [NotReady("the server is shutting down") for _ in stranded])
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
            rows = jobs[0].rows if len(jobs) == 1 else np.concatenate([j.rows for j in jobs])
            try:
                scores = self._predict(rows)
            except Exception:
                logger.exception("the model failed on a batch of %d rows", len(rows))
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
