"""Champion against challenger on the same requests: decision agreement and its confusion,
score correlation, PSI between the two score distributions, since the policy began and over
the last `window` requests, and per-version latency; and the guard's judgement of them. On
the event loop only; each batch of pairs is added in a few numpy operations."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from server.policy import Policy

DECISIONS = ("APPROVE", "REVIEW", "DECLINE")
# Fixed score bins, log-spaced: fraud scores crowd near 0, where equal-width bins would put
# nearly everything in the first. 13 bins from 0 to 1e-4, ..., 0.46 to 1.
EDGES = np.asarray([0.0, *np.logspace(-4, 0, 13)])
INNER_EDGES = EDGES[1:-1]
BINS = len(EDGES) - 1
LATENCY_SAMPLES = 4096


def decisions(probabilities: np.ndarray, review: float, decline: float) -> np.ndarray:
    """0 APPROVE, 1 REVIEW, 2 DECLINE, as ScoringService.decide, for many rows at once."""
    return (probabilities >= review).astype(np.int64) + (probabilities >= decline)


def score_bins(probabilities: np.ndarray) -> np.ndarray:
    return np.searchsorted(INNER_EDGES, probabilities, side="right")


def psi(expected: np.ndarray, actual: np.ndarray) -> float | None:
    """The population stability index between two bin counts (half a count added to each bin,
    so that an empty bin does not make it infinite); None before either has a row."""
    if expected.sum() == 0 or actual.sum() == 0:
        return None
    e = (expected + 0.5) / (expected.sum() + 0.5 * len(expected))
    a = (actual + 0.5) / (actual.sum() + 0.5 * len(actual))
    return float(np.sum((a - e) * np.log(a / e)))


class Window:
    """The last `size` pairs, as decision agreement and both scores' bins, in a ring."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.agree = np.zeros(size, dtype=bool)
        self.champion_bin = np.zeros(size, dtype=np.int64)
        self.challenger_bin = np.zeros(size, dtype=np.int64)
        self.filled = 0
        self.at = 0

    def add(self, agree: np.ndarray, champion_bin: np.ndarray, challenger_bin: np.ndarray) -> None:
        n = len(agree)
        if n >= self.size:  # only the newest rows of a batch larger than the window count
            agree, champion_bin, challenger_bin = (
                agree[-self.size :],
                champion_bin[-self.size :],
                challenger_bin[-self.size :],
            )
            n = self.size
        slots = (self.at + np.arange(n)) % self.size
        self.agree[slots] = agree
        self.champion_bin[slots] = champion_bin
        self.challenger_bin[slots] = challenger_bin
        self.at = (self.at + n) % self.size
        self.filled = min(self.size, self.filled + n)

    def tallies(self) -> dict[str, Any]:
        n = self.filled
        return {
            "window_agreed": int(self.agree[:n].sum()),
            "window_champion_bins": np.bincount(self.champion_bin[:n], minlength=BINS).tolist(),
            "window_challenger_bins": np.bincount(self.challenger_bin[:n], minlength=BINS).tolist(),
        }

    def figures(self) -> dict[str, Any]:
        return window_figures(self.tallies())


class Comparison:
    """One challenger (a shadow or a canary) against the champion, on the requests that one of
    them answered and the other was scored on after the answer."""

    def __init__(self, role: str, champion: str, challenger: str, window: int) -> None:
        self.role = role
        self.champion = champion
        self.challenger = challenger
        self.confusion = np.zeros((3, 3), dtype=np.int64)  # champion's decision x challenger's
        self.sums = np.zeros(5)  # x, y, xx, yy, xy: Pearson's r at any time
        self.champion_bins = np.zeros(BINS, dtype=np.int64)
        self.challenger_bins = np.zeros(BINS, dtype=np.int64)
        self.window = Window(window)
        self.errors = 0  # model errors of the challenger
        self.dropped = 0  # rows not compared: the comparison could not keep up
        self.run_seconds = 0.0  # the other version's runs after the answers
        self.run_rows = 0

    def add(
        self,
        champion_p: np.ndarray,
        challenger_p: np.ndarray,
        champion_thresholds: tuple[float, float],
        challenger_thresholds: tuple[float, float],
    ) -> None:
        x = champion_p.astype(np.float64)
        y = challenger_p.astype(np.float64)
        dx = decisions(x, *champion_thresholds)
        dy = decisions(y, *challenger_thresholds)
        np.add.at(self.confusion, (dx, dy), 1)
        self.sums += (x.sum(), y.sum(), x @ x, y @ y, x @ y)
        bx, by = score_bins(x), score_bins(y)
        self.champion_bins += np.bincount(bx, minlength=BINS)
        self.challenger_bins += np.bincount(by, minlength=BINS)
        self.window.add(dx == dy, bx, by)

    def tallies(self) -> dict[str, Any]:
        """What adds up across workers, as JSON: /metrics takes the figures from the sum
        (figures_of), since agreements, correlations and PSIs themselves do not add."""
        return {
            "confusion": self.confusion.ravel().tolist(),
            "sums": self.sums.tolist(),
            "champion_bins": self.champion_bins.tolist(),
            "challenger_bins": self.challenger_bins.tolist(),
            **self.window.tallies(),
            "errors": self.errors,
            "dropped": self.dropped,
        }

    def figures(self) -> dict[str, Any]:
        return (
            {"version": self.challenger, "role": self.role, "champion": self.champion}
            | figures_of(self.tallies())
            | {
                "after_answer_us_per_row": (
                    1e6 * self.run_seconds / self.run_rows if self.run_rows else None
                )
            }
        )


def figures_of(tallies: dict[str, Any]) -> dict[str, Any]:
    """A comparison's figures from its tallies (Comparison.tallies, or several workers'
    added up)."""
    confusion = np.asarray(tallies["confusion"], dtype=np.int64).reshape(3, 3)
    compared = int(confusion.sum())
    return {
        "compared": compared,
        "agreement": float(np.trace(confusion) / compared) if compared else None,
        "decisions": {
            f"champion {mine}": dict(zip(DECISIONS, map(int, row), strict=True))
            for mine, row in zip(DECISIONS, confusion, strict=True)
        },
        "score_correlation": correlation(compared, tallies["sums"]),
        "psi": psi(np.asarray(tallies["champion_bins"]), np.asarray(tallies["challenger_bins"])),
        "window": window_figures(tallies),
        "errors": int(tallies["errors"]),
        "dropped": int(tallies["dropped"]),
    }


def window_figures(tallies: dict[str, Any]) -> dict[str, Any]:
    champion_bins = np.asarray(tallies["window_champion_bins"])
    n = int(champion_bins.sum())
    return {
        "compared": n,
        "agreement": float(tallies["window_agreed"] / n) if n else None,
        "psi": psi(champion_bins, np.asarray(tallies["window_challenger_bins"])),
    }


def correlation(n: int, sums: list[float]) -> float | None:
    """Pearson's r from the count and the sums of x, y, xx, yy and xy."""
    if n < 2:
        return None
    sx, sy, sxx, syy, sxy = sums
    vx, vy = n * sxx - sx * sx, n * syy - sy * sy
    if vx <= 0.0 or vy <= 0.0:
        return None
    r = (n * sxy - sx * sy) / math.sqrt(vx * vy)
    return float(max(-1.0, min(1.0, r)))


class Latencies:
    """The last LATENCY_SAMPLES request times of each version that answers."""

    def __init__(self) -> None:
        self.by_version: dict[str, deque[float]] = {}

    def ring(self, version: str) -> deque[float]:
        ring = self.by_version.get(version)
        if ring is None:
            ring = self.by_version[version] = deque(maxlen=LATENCY_SAMPLES)
        return ring

    def quantiles(self, version: str, last: int | None = None) -> dict[str, float] | None:
        ring = self.by_version.get(version)
        if not ring:
            return None
        values = np.fromiter(ring, dtype=np.float64)
        if last is not None:
            values = values[-last:]
        p50, p99 = np.percentile(values, [50, 99])
        return {"count": len(values), "p50_ms": 1e3 * float(p50), "p99_ms": 1e3 * float(p99)}


def guard_finding(policy: Policy, comparison: Comparison, latencies: Latencies) -> str | None:
    """Why the guard (server/policy.py) rolls the policy's canary back, or None: a model
    error, decision agreement or PSI over its window, or its p99 against the champion's."""
    guard = policy.guard
    if policy.canary is None:
        return None
    if comparison.errors:
        return f"{comparison.errors} model errors"
    window = comparison.window.figures()
    if window["compared"] >= min(guard.min_compared, guard.window):
        if window["agreement"] < guard.min_agreement:
            return (
                f"decision agreement {window['agreement']:.4f} < {guard.min_agreement} "
                f"over the last {window['compared']} requests"
            )
        if window["psi"] is not None and window["psi"] > guard.max_psi:
            return (
                f"PSI {window['psi']:.4f} > {guard.max_psi} "
                f"over the last {window['compared']} requests"
            )
    mine = latencies.quantiles(policy.canary, guard.window)
    theirs = latencies.quantiles(policy.champion, guard.window)
    if (
        mine is not None
        and theirs is not None
        and min(mine["count"], theirs["count"]) >= min(guard.min_compared, guard.window)
        and mine["p99_ms"] > guard.max_p99_ratio * theirs["p99_ms"]
    ):
        return (
            f"p99 {mine['p99_ms']:.3f} ms > {guard.max_p99_ratio} x the champion's "
            f"{theirs['p99_ms']:.3f} ms"
        )
    return None
