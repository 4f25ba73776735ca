"""The threaded runner: one inference thread takes everything waiting whenever it is free
(the queue, its bound and its chunking are server/batching.py's). onnxruntime releases the
GIL inside `run`, so parsing overlaps with inference: worth it with a heavier model or more
cores than the default LoopBatcher's case."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable

import numpy as np

from server import deadlines
from server.batching import BoundedQueue, Job, observe_run, score_batch, shutting_down


class Batcher(BoundedQueue):
    _counts_on_loop = False  # the inference thread takes batches: expired ones are counted
    # on the loop, when they are answered

    def _setup(self) -> None:
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="inference", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop taking work; fail whatever still waits; let the running batch finish."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def retire(self) -> None:
        with self._wake:
            self._retired = True
            self._wake.notify()

    async def _predict_rows(self, rows: np.ndarray, accepted: bool, bounded: bool) -> np.ndarray:
        loop = asyncio.get_running_loop()
        with self._wake:
            if self._stopped:  # retired and done: no thread is left to take it
                raise shutting_down()
            job = self._admit(rows, loop, accepted, bounded)
            self._wake.notify()
        return await job.future

    def _chunked_done(self) -> None:
        with self._wake:
            self._wake.notify()

    def _count_expired(self, late: list[Job]) -> Callable[[], None] | None:
        metrics = self.metrics
        if metrics is None:
            return None

        def count() -> None:
            metrics.expired += len(late)

        return count

    def _take(self) -> tuple[list[Job], list[Job]] | None:
        """Block until there is work and return a batch of it, with the jobs that expired
        waiting (see _take_batch); None once closed."""
        with self._wake:
            while not self._pending and not self._closed:
                # Retired: stop once nothing waits and no chunked request has more to send.
                if self._retired and not self._chunking:
                    self._stopped = True
                    return None
                self._wake.wait()
            if self._closed:
                stranded = list(self._pending)
                self._pending.clear()
                _deliver(stranded, [shutting_down() for _ in stranded])
                return None
            if self.max_delay_s > 0 and self._pending_rows < self.max_batch:
                deadline = time.monotonic() + self.max_delay_s
                while self._pending_rows < self.max_batch and not (self._closed or self._retired):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            return self._take_batch()

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            jobs, late = taken
            if late:
                _deliver(late, [deadlines.expired() for _ in late], self._count_expired(late))
            if not jobs:
                continue
            started = time.perf_counter()
            results = score_batch(self._predict, jobs)
            # Observed on the loop, with the answers: the tallies are not thread-safe.
            run = functools.partial(observe_run, self.metrics, jobs, started, time.perf_counter())
            _deliver(jobs, results, run)


def _deliver(
    jobs: list[Job],
    results: list[np.ndarray | BaseException],
    observe: Callable[[], None] | None = None,
) -> None:
    """One wake-up per event loop per batch, not one per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, np.ndarray | BaseException]]] = {}
    for job, result in zip(jobs, results, strict=True):
        by_loop.setdefault(job.loop, []).append((job, result))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve, items, observe)
        observe = None  # once per batch, on one loop


def _resolve(
    items: list[tuple[Job, np.ndarray | BaseException]], observe: Callable[[], None] | None
) -> None:
    if observe is not None:
        observe()
    for job, result in items:
        if job.future.done():  # the client went away and its task was cancelled
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
