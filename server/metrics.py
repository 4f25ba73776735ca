"""Prometheus metrics: cheap in-process tallies, exported through prometheus-client.

On the hot path a histogram observation is a list append (tens of nanoseconds);
the values are sorted into buckets with numpy a few thousand at a time, at least
once a second and whenever /metrics is read. prometheus-client's own metric
objects take a lock per observation, and even a bisect per observation cost 8 us
a request over eight observations: more than the 5 % of throughput metrics may
take. The tallies become metric families only when /metrics is scraped.

Metrics.state() is what a worker holds; server/metrics_export.py renders it (and adds up
several workers' states).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from server.drift import ScoreDrift

logger = logging.getLogger("uvicorn.error").getChild("fraud")

# Ten microseconds to a second: a scored request takes tens to hundreds of microseconds.
SECONDS = (
    1e-5,
    2e-5,
    5e-5,
    1e-4,
    2e-4,
    5e-4,
    1e-3,
    2e-3,
    5e-3,
    1e-2,
    2e-2,
    5e-2,
    0.1,
    0.2,
    0.5,
    1.0,
)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PROBABILITY = tuple(round(0.05 * i, 2) for i in range(1, 21))
STAGES = ("parse", "queue", "inference", "encode")
FLUSH_INTERVAL_S = 1.0
RECENT_S = 60.0  # what GET /v1/stats covers
RECENT_POINTS = 600  # enough for a flush a second, and scrapes in between

Labels = tuple[str, ...]
# Collected at scrape time: name -> (help, label names, {labels: value}).
GaugeSource = Callable[[], dict[str, tuple[str, Labels, dict[Labels, float]]]]


class DriftWindow(NamedTuple):
    counts: list[int]  # live scores per bin
    proportions: list[float]  # the reference's share per bin
    min_count: int


# Collected at scrape time: (model, version) -> its drift window.
DriftSource = Callable[[], dict[tuple[str, str], DriftWindow]]
# Collected at scrape time: {"model", "version", "role", **Comparison.tallies()} per challenger.
ComparisonSource = Callable[[], list[dict[str, Any]]]
# What drift_of finds a served version's window by: (model, version).
DriftLookup = Callable[[str, str], ScoreDrift | None]


# A scoring request's times (perf_counter), in ScoringLog.times order; NaN if not reached.
STARTED, BODY_READ, VALIDATED, ENCODING, FINISHED = range(5)


class ScoringLog:
    __slots__ = ("statuses", "times")

    def __init__(self) -> None:
        self.times = array("d")  # five a request: STARTED ... FINISHED
        self.statuses = array("H")


class Histogram:
    __slots__ = ("_edges", "_pending", "bounds", "counts", "observe", "observe_many", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._edges = np.asarray(bounds, dtype=np.float64)
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self._pending: list[float] = []
        # The hot path calls these: bound C methods, no Python frame.
        self.observe: Callable[[float], None] = self._pending.append
        self.observe_many: Callable[[Iterable[float]], None] = self._pending.extend

    def flush(self) -> None:
        """Sort the values observed since the last flush into the buckets."""
        if not self._pending:
            return
        values = np.asarray(self._pending, dtype=np.float64)
        self._pending.clear()
        # side="left" puts a value equal to a bound in that bound's bucket, as `le` means.
        where = np.searchsorted(self._edges, values, side="left")
        added = np.bincount(where, minlength=len(self.counts))
        self.counts = [a + int(b) for a, b in zip(self.counts, added, strict=True)]
        self.total += float(values.sum())

    def pending(self) -> int:
        return len(self._pending)

    def observe_array(self, values: np.ndarray) -> None:
        """Many values at once, binned now."""
        where = np.searchsorted(self._edges, values, side="left")
        added = np.bincount(where, minlength=len(self.counts))
        self.counts = [a + int(b) for a, b in zip(self.counts, added, strict=True)]
        self.total += float(values.sum())


class Metrics:
    """Every tally the server keeps. Touched only on the event loop."""

    def __init__(self) -> None:
        # (route, model, status); model is "" on routes that address no model. The status
        # is the HTTP status, or the gRPC code's name on gRPC's routes.
        self.requests: dict[tuple[str, str, int | str], int] = {}
        # The scoring routes' requests, per (route, model): five times and a status each,
        # counted in bulk. Raw arrays, not tuples: a second's worth of live Python
        # containers would make the garbage collector's passes longer and more frequent.
        self.scoring: dict[tuple[str, str], ScoringLog] = {}
        # Probabilities returned, per (model, version), binned in bulk into the model's
        # `probability` histogram and into the version's drift window, which `drift_of` finds.
        self.scores: dict[tuple[str, str], list[np.ndarray]] = {}
        self.drift_of: DriftLookup = lambda model, version: None
        self.durations: dict[tuple[str, str], Histogram] = {}  # (route, model) -> seconds
        self.stages = {stage: Histogram(SECONDS) for stage in STAGES}
        self.batch_rows = Histogram(ROWS)
        self.probability: dict[str, Histogram] = {}  # model -> probabilities returned
        self.decisions: dict[tuple[str, str], int] = {}  # (model, decision)
        self.out_of_distribution: dict[str, int] = {}  # model -> flagged rows
        self.shed = 0
        self.expired = 0  # answered 503 deadline_exceeded by the queue
        self.rate_limited = 0
        self.gauge_sources: list[GaugeSource] = []
        self.counter_sources: list[GaugeSource] = []
        self.drift_sources: list[DriftSource] = []
        self.comparison_sources: list[ComparisonSource] = []
        # (time, seconds covered, requests, p50 ms, p99 ms) per flush, the last few minutes.
        self.recent: deque[tuple[float, float, int, float, float]] = deque(maxlen=RECENT_POINTS)
        self._last_flush = time.time()

    def scoring_log(self, route: str, model: str = "") -> ScoringLog:
        log = self.scoring.get((route, model))
        if log is None:
            log = self.scoring[(route, model)] = ScoringLog()
        return log

    def score_log(self, model: str, version: str) -> list[np.ndarray]:
        return self.scores.setdefault((model, version), [])

    def count_decision(self, model: str, decision: str, unusual: bool) -> None:
        key = (model, decision)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        if unusual:
            self.out_of_distribution[model] = self.out_of_distribution.get(model, 0) + 1

    def count_request(self, route: str, status: int | str, seconds: float, model: str = "") -> None:
        key = (route, model, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self._duration(route, model).observe(seconds)

    def _duration(self, route: str, model: str) -> Histogram:
        histogram = self.durations.get((route, model))
        if histogram is None:
            histogram = self.durations[(route, model)] = Histogram(SECONDS)
        return histogram

    def _flush_scoring(self) -> None:
        """Count and time the scoring requests recorded since the last flush, in bulk."""
        totals: list[np.ndarray] = []
        for (route, model), log in self.scoring.items():
            if not log.statuses:
                continue
            times = np.frombuffer(log.times, dtype=np.float64).reshape(-1, 5).copy()
            totals.append(times[:, 4] - times[:, 0])
            statuses = np.frombuffer(log.statuses, dtype=np.uint16).copy()
            del log.times[:], log.statuses[:]
            for status, n in zip(*np.unique(statuses, return_counts=True), strict=True):
                key = (route, model, int(status))
                self.requests[key] = self.requests.get(key, 0) + int(n)
            self._duration(route, model).observe_array(times[:, 4] - times[:, 0])
            # Columns: started, body read, validated, encoding, finished; NaN where a
            # request did not get that far.
            parse = times[:, 2] - times[:, 1]
            self.stages["parse"].observe_array(parse[np.isfinite(parse)])
            encode = times[:, 4] - times[:, 3]
            self.stages["encode"].observe_array(encode[np.isfinite(encode)])
        self._remember(np.concatenate(totals) if totals else np.empty(0))

    def _remember(self, seconds: np.ndarray) -> None:
        """One point of the recent-traffic series: scoring requests since the last flush
        and their p50/p99, for GET /v1/stats (the browser page's live panel)."""
        now = time.time()
        since = self._last_flush
        self._last_flush = now
        if len(seconds):
            p50, p99 = np.percentile(seconds, [50, 99]) * 1000
        else:
            p50 = p99 = float("nan")
        self.recent.append((now, now - since, len(seconds), float(p50), float(p99)))

    def recent_traffic(self) -> list[dict[str, float | None]]:
        """The last minute, a point per flush: time, requests/s, p50 and p99 in ms."""
        self.flush()
        cutoff = time.time() - RECENT_S
        return [
            {
                "time": round(at, 3),
                "rps": round(n / span, 1) if span > 0 else 0.0,
                "p50_ms": None if math.isnan(p50) else round(p50, 3),
                "p99_ms": None if math.isnan(p99) else round(p99, 3),
            }
            for at, span, n, p50, p99 in self.recent
            if at >= cutoff
        ]

    def histograms(self) -> list[Histogram]:
        return [
            *self.durations.values(),
            *self.stages.values(),
            self.batch_rows,
            *self.probability.values(),
        ]

    def _flush_scores(self) -> None:
        for (model, version), log in self.scores.items():
            if not log:
                continue
            scores = np.concatenate(log)
            log.clear()
            histogram = self.probability.get(model)
            if histogram is None:
                histogram = self.probability[model] = Histogram(PROBABILITY)
            histogram.observe_array(scores)
            drift = self.drift_of(model, version)
            if drift is not None:
                drift.observe(scores, checked=True)  # the service checked them: probabilities

    def flush(self) -> None:
        self._flush_scoring()
        self._flush_scores()
        for histogram in self.histograms():
            histogram.flush()

    async def keep_flushing(self) -> None:
        """Bound the values waiting for their buckets, however rarely /metrics is read."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                self.flush()
            except Exception:  # a failed flush must not stop the next ones
                logger.exception("metrics flush failed")

    def state(self) -> dict[str, Any]:
        """Everything, as JSON-ready data: what a worker writes and a scrape adds up."""
        self.flush()
        requests: dict[Labels, float] = {
            (route, model, str(status), protocol_of(route)): n
            for (route, model, status), n in self.requests.items()
        }
        counters: dict[str, tuple[str, Labels, dict[Labels, float]]] = {
            "fraud_requests": (
                "Requests answered; model is empty on routes that address no model; status is"
                " the HTTP status, or the gRPC code on gRPC's methods.",
                ("route", "model", "status", "protocol"),
                requests,
            ),
            "fraud_decisions": (
                "Scored transactions by decision.",
                ("model", "decision"),
                {key: n for key, n in self.decisions.items()},
            ),
            "fraud_out_of_distribution": (
                "Scored transactions flagged out of the training distribution.",
                ("model",),
                {(m,): n for m, n in self.out_of_distribution.items()},
            ),
            "fraud_shed": ("Requests shed with 503: the queue was full.", (), {(): self.shed}),
            "fraud_deadline_exceeded": (
                "Requests answered 503 unscored: they waited past their deadline.",
                (),
                {(): self.expired},
            ),
            "fraud_rate_limited": (
                "Requests refused with 429: over the key's rate.",
                (),
                {(): self.rate_limited},
            ),
        }
        for source in self.counter_sources:
            counters |= source()
        gauges: dict[str, tuple[str, Labels, dict[Labels, float]]] = {}
        for source in self.gauge_sources:
            gauges |= source()
        histograms: dict[str, tuple[str, Labels, dict[Labels, Any]]] = {
            "fraud_request_duration_seconds": (
                "Time from the request's arrival to the end of its answer.",
                ("route", "model", "protocol"),
                {
                    (route, model, protocol_of(route)): (h.bounds, h.counts, h.total)
                    for (route, model), h in self.durations.items()
                },
            ),
            "fraud_stage_duration_seconds": (
                "Time per stage: parse (JSON and validation), queue (waiting for the model),"
                " inference (one session.run, per batch), encode (the answer).",
                ("stage",),
                {(s,): (h.bounds, h.counts, h.total) for s, h in self.stages.items()},
            ),
            "fraud_batch_rows": (
                "Rows per model run.",
                (),
                {(): (self.batch_rows.bounds, self.batch_rows.counts, self.batch_rows.total)},
            ),
            "fraud_probability": (
                "Fraud probabilities returned.",
                ("model",),
                {(m,): (h.bounds, h.counts, h.total) for m, h in self.probability.items()},
            ),
        }
        drift: dict[tuple[str, str], DriftWindow] = {}
        for drift_source in self.drift_sources:
            drift |= drift_source()
        return {
            "counters": _encode(counters),
            "gauges": _encode(gauges),
            "histograms": _encode(histograms),
            # PSI is computed after adding up workers' windows: PSIs themselves do not add.
            # A list, since JSON keys cannot be pairs.
            "drift": [
                {"model": model, "version": version, **window._asdict()}
                for (model, version), window in drift.items()
            ],
            # Likewise agreements, correlations and PSIs: from the added-up tallies.
            "comparisons": [row for source in self.comparison_sources for row in source()],
        }


def protocol_of(route: str) -> str:
    """ "grpc" for a gRPC method ("/<package>.<Service>/<Method>"), else "http": no HTTP
    route template has two segments of which the first holds a dot."""
    parts = route.split("/")
    return "grpc" if len(parts) == 3 and not parts[0] and "." in parts[1] else "http"


def _encode(families: dict[str, tuple[str, Labels, dict[Labels, Any]]]) -> dict[str, Any]:
    return {
        name: {
            "help": text,
            "labels": list(labels),
            "values": [[list(k), v] for k, v in values.items()],
        }
        for name, (text, labels, values) in families.items()
    }
