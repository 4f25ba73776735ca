"""What /metrics renders: a worker's tallies (server/metrics.py) as Prometheus families.

Several uvicorn workers: with FRAUD_METRICS_DIR set, each worker writes its
tallies to `<dir>/<pid>-<start>.json` every second and at exit, and a scrape on
any worker adds up every file, so the numbers cover all workers (at most a
second late for the others). Counters and histograms of workers that exited are
kept, so totals never go down; gauges count live workers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from server.comparison import BINS, figures_of
from server.drift import psi as population_stability
from server.metrics import Metrics

logger = logging.getLogger("uvicorn.error").getChild("fraud")

DUMP_INTERVAL_S = 1.0
# Gauges that do not add up across workers, the most of any worker instead: what a worker is
# (the same in each), and latency quantiles (the slowest worker's, a bound for all).
MOST_OF_ANY_WORKER = frozenset(
    {"fraud_model_info", "fraud_draining", "fraud_version_latency_seconds"}
)
COMPARISON_PREFIX = "fraud_comparison_"  # the families comparison_families() makes
# The lengths of a comparison's list tallies in this version (Comparison.tallies).
LAYOUT = {
    "confusion": 9,
    "sums": 5,
    "champion_bins": BINS,
    "challenger_bins": BINS,
    "window_champion_bins": BINS,
    "window_challenger_bins": BINS,
}
# A comparison's fields that add up (server/comparison.py's Comparison.tallies).
COMPARISON_TALLIES = frozenset(
    {
        "confusion",
        "sums",
        "champion_bins",
        "challenger_bins",
        "window_agreed",
        "window_champion_bins",
        "window_challenger_bins",
        "errors",
        "dropped",
    }
)
LIVE_FILE_AGE_S = 5.0  # a worker's file older than this: the worker is gone, drop its gauges


def merge(states: list[dict[str, Any]], live: list[bool]) -> dict[str, Any]:
    """Sum counters and histograms over every state, gauges over live ones only."""
    merged: dict[str, dict[Any, Any]] = {
        "counters": {},
        "gauges": {},
        "histograms": {},
        "drift": {},  # (model, version) -> window, once merged
        "comparisons": {},  # (model, version, role) -> tallies, once merged
    }
    for state, alive in zip(states, live, strict=True):
        for which, row in _comparison_rows(state) if alive else ():
            merged["comparisons"][which] = _added(merged["comparisons"].get(which), row)
        for key, window in _drift_windows(state) if alive else ():
            into = merged["drift"].get(key)
            if into is None or len(into["counts"]) != len(window["counts"]):
                merged["drift"][key] = dict(window, counts=list(window["counts"]))
            else:
                into["counts"] = [
                    a + b for a, b in zip(into["counts"], window["counts"], strict=True)
                ]
        for kind in ("counters", "gauges", "histograms"):
            if kind == "gauges" and not alive:
                continue
            for name, family in state.get(kind, {}).items():
                if kind == "gauges" and name.startswith(COMPARISON_PREFIX):
                    # Figures a worker of an older version wrote as gauges (one draining
                    # through a restart, say): they come from the tallies now, and a second
                    # family of the same name would make the scrape invalid.
                    continue
                into = merged[kind].setdefault(
                    name, {"help": family["help"], "labels": family["labels"], "values": {}}
                )
                if list(into["labels"]) != list(family["labels"]):
                    # A file written by another version of the server: not added up.
                    raise ValueError(f"{name} has labels {family['labels']}, not {into['labels']}")
                values = family["values"]  # pairs as written, or a dict once merged
                for labels, value in values.items() if isinstance(values, dict) else values:
                    key = tuple(labels)
                    if kind == "histograms":
                        bounds, counts, total = value
                        old = into["values"].get(key)
                        if old is not None and list(old[0]) == list(bounds):
                            counts = [a + b for a, b in zip(old[1], counts, strict=True)]
                            total += old[2]
                        into["values"][key] = (bounds, counts, total)
                    elif kind == "gauges" and name in MOST_OF_ANY_WORKER:
                        into["values"][key] = max(into["values"].get(key, value), value)
                    else:
                        into["values"][key] = into["values"].get(key, 0) + value
    return merged


def _drift_windows(state: dict[str, Any]) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    """((model, version), window) pairs: from a worker's list, or from an earlier merge's
    dict. ValueError for anything else (say, a file of an older format), so it is skipped."""
    windows = state.get("drift", [])
    if isinstance(windows, dict):
        pairs = list(windows.items())
    else:
        pairs = [((w["model"], w["version"]), w) for w in windows]
    for key, _ in pairs:
        if not (type(key) is tuple and len(key) == 2 and all(type(k) is str for k in key)):
            raise ValueError(f"a drift window is keyed {key!r}, not (model, version)")
    return pairs


def _comparison_rows(state: dict[str, Any]) -> list[tuple[tuple[str, str, str], dict[str, Any]]]:
    """((model, version, role), tallies) pairs, as _drift_windows does for drift."""
    rows = state.get("comparisons", [])
    if isinstance(rows, dict):
        pairs = list(rows.items())
    else:
        pairs = [((r["model"], r["version"], r["role"]), r) for r in rows]
    for key, row in pairs:
        if not (type(key) is tuple and len(key) == 3 and all(type(k) is str for k in key)):
            raise ValueError(f"a comparison is keyed {key!r}, not (model, version, role)")
        if not row.keys() >= COMPARISON_TALLIES:
            raise ValueError(f"a comparison lacks {sorted(COMPARISON_TALLIES - row.keys())}")
    # A row of another layout (bins of another version of the server) is left out, not the
    # whole file with its counters.
    return [(key, row) for key, row in pairs if _layout(row) == LAYOUT]


def _layout(row: dict[str, Any]) -> dict[str, int]:
    return {k: len(row[k]) for k in LAYOUT if isinstance(row[k], list)}


def _added(into: dict[str, Any] | None, row: dict[str, Any]) -> dict[str, Any]:
    """Two workers' tallies of one comparison, added up field by field."""
    mine = {k: (list(row[k]) if isinstance(row[k], list) else row[k]) for k in COMPARISON_TALLIES}
    if into is None:
        return mine
    for key in COMPARISON_TALLIES:
        value = into[key]
        if isinstance(value, list):
            mine[key] = [a + b for a, b in zip(value, mine[key], strict=True)]
        else:
            mine[key] = value + mine[key]
    return mine


def comparison_families(rows: dict[tuple[str, str, str], dict[str, Any]]) -> Iterator[Metric]:
    """Champion against challenger (server/comparison.py), from the added-up tallies."""
    who = ["model", "version", "role"]
    made = {
        name: GaugeMetricFamily(COMPARISON_PREFIX + name, text, labels=who)
        for name, text in (
            ("compared", "Requests scored by both champion and challenger."),
            ("agreement", "Share of compared requests with the same decision."),
            ("score_correlation", "Pearson correlation of the two scores."),
            ("psi", "Population stability index between the two scores."),
            (
                "window_agreement",
                "Decision agreement over the guard's window (every worker's, added up).",
            ),
            ("window_psi", "PSI over the guard's window (every worker's, added up)."),
            ("dropped", "Requests left uncompared: the comparison fell behind."),
            ("errors", "Model errors of the challenger."),
        )
    }
    confusion = GaugeMetricFamily(
        COMPARISON_PREFIX + "decisions",
        "Compared requests by the champion's decision and the challenger's.",
        labels=[*who, "champion_decision", "challenger_decision"],
    )
    for key, tallies in rows.items():
        labels = list(key)
        found = figures_of(tallies)
        window = found["window"]
        for name, value in (
            ("compared", found["compared"]),
            ("agreement", found["agreement"]),
            ("score_correlation", found["score_correlation"]),
            ("psi", found["psi"]),
            ("window_agreement", window["agreement"]),
            ("window_psi", window["psi"]),
            ("dropped", found["dropped"]),
            ("errors", found["errors"]),
        ):
            if value is not None:
                made[name].add_metric(labels, float(value))
        for mine, row in found["decisions"].items():
            for theirs, count in row.items():
                confusion.add_metric([*labels, mine.removeprefix("champion "), theirs], count)
    yield from made.values()
    yield confusion


def families(state: dict[str, Any]) -> Iterator[Metric]:
    for name, family in state["counters"].items():
        counter = CounterMetricFamily(name, family["help"], labels=family["labels"])
        for labels, value in _values(family):
            counter.add_metric(labels, value)
        yield counter
    for name, family in state["gauges"].items():
        gauge = GaugeMetricFamily(name, family["help"], labels=family["labels"])
        for labels, value in _values(family):
            gauge.add_metric(labels, value)
        yield gauge
    psi = GaugeMetricFamily(
        "fraud_score_psi",
        "Population stability index of the recent fraud probabilities against the model"
        " version's reference (0: same; above 0.2: a marked shift). Absent until the window"
        " holds enough scores.",
        labels=["model", "version"],
    )
    window_size = GaugeMetricFamily(
        "fraud_score_drift_window", "Scores in the drift window.", labels=["model", "version"]
    )
    for (model, version), window in state["drift"].items():
        count = sum(window["counts"])
        window_size.add_metric([model, version], count)
        if count >= window["min_count"] and count > 0:
            stability = population_stability(window["counts"], window["proportions"])
            psi.add_metric([model, version], stability)
    yield psi
    yield window_size
    yield from comparison_families(state["comparisons"])
    for name, family in state["histograms"].items():
        histogram = HistogramMetricFamily(name, family["help"], labels=family["labels"])
        for labels, (bounds, counts, total) in _values(family):
            cumulative, running = [], 0
            for bound, count in zip([*bounds, math.inf], counts, strict=True):
                running += count
                cumulative.append((_bound(bound), running))
            histogram.add_metric(labels, cumulative, total)
        yield histogram


def _values(family: dict[str, Any]) -> list[tuple[list[str], Any]]:
    values = family["values"]
    items = values.items() if isinstance(values, dict) else ((tuple(k), v) for k, v in values)
    return [(list(k), v) for k, v in items]


def _bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class MetricsExporter:
    """Renders /metrics, and in multi-worker mode keeps this worker's file current."""

    def __init__(self, metrics: Metrics, directory: Path | None = None) -> None:
        self.metrics = metrics
        self.directory = directory
        self.file = (
            directory / f"{os.getpid()}-{time.time_ns()}.json" if directory is not None else None
        )

    def render(self) -> bytes:
        state = self.metrics.state()
        if self.directory is not None:
            # This worker's own file is rewritten first, then every worker is read as of its
            # last write, so a total never goes down between two scrapes answered by
            # different workers. Its own tallies go in first: they set the families' labels,
            # so that a stray file of another format is the one skipped.
            self.dump(state)
            merged = merge([state], [True])
            for other, alive in self._workers():
                try:
                    merged = merge([merged, other], [True, alive])
                except (AttributeError, KeyError, TypeError, ValueError):
                    continue  # not a tallies file (someone else's, or a damaged one): skip it
            state = merged
        else:
            state = merge([state], [True])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(state))
        return generate_latest(registry)

    def _workers(self) -> Iterator[tuple[dict[str, Any], bool]]:
        if self.directory is None:
            return
        now = time.time()
        for path in self.directory.glob("*.json"):
            if path == self.file:
                continue  # merged from memory, just as it was written
            try:
                age = now - path.stat().st_mtime
                yield json.loads(path.read_bytes()), age < LIVE_FILE_AGE_S
            except (OSError, ValueError):
                continue  # being replaced right now, or gone: the next scrape sees it

    def dump(self, state: dict[str, Any] | None = None) -> None:
        if self.file is None:
            return
        staging = self.file.with_suffix(".tmp")
        staging.write_text(json.dumps(state if state is not None else self.metrics.state()))
        os.replace(staging, self.file)  # a reader sees the old file or the new, never half

    async def keep_dumping(self) -> None:
        while True:
            await asyncio.sleep(DUMP_INTERVAL_S)
            try:
                self.dump()
            except Exception:  # keep trying: the folder may come back
                logger.exception("cannot write the metrics file %s", self.file)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.dump()


class _Snapshot:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        return families(self.state)
