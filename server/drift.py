"""Score drift: the population stability index of recent fraud probabilities against the
distribution the exporter stored in the artifact (ModelInfo.score_reference).

Bin i holds edges[i-1] <= p < edges[i]; the outer bins are open-ended, so every probability
falls in exactly one of len(edges) + 1 bins, as in export/artifact.py (bisect_right there is
numpy's searchsorted(side="right")).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

# Live and reference proportions are floored here before the log, since an empty bin would give
# ln(0). 1e-4 is one score in the default 10,000-score window, so the floor changes only empty
# bins, whose term it bounds (about 0.69 for an empty 10% bin) instead of making PSI infinite.
EPSILON = 1e-4
PROPORTION_SUM_TOLERANCE = 1e-6


def check_reference(edges: Sequence[float], proportions: Sequence[float]) -> None:
    """ValueError unless the bins and proportions describe a distribution."""
    if len(proportions) != len(edges) + 1:
        raise ValueError(
            f"{len(edges)} edges make {len(edges) + 1} bins, not {len(proportions)} proportions"
        )
    if not all(math.isfinite(e) for e in edges):
        raise ValueError("score reference edges must be finite")
    if any(a >= b for a, b in pairwise(edges)):
        raise ValueError("score reference edges must be strictly increasing")
    if not all(math.isfinite(p) and p >= 0.0 for p in proportions):
        raise ValueError("score reference proportions must be finite and non-negative")
    if abs(math.fsum(proportions) - 1.0) > PROPORTION_SUM_TOLERANCE:
        raise ValueError(f"score reference proportions sum to {math.fsum(proportions)}, not 1")


def psi(counts: Sequence[int], proportions: Sequence[float]) -> float:
    """sum((a - e) * ln(a / e)) over bins: live counts against reference proportions."""
    n = sum(counts)
    total = 0.0
    for count, p in zip(counts, proportions, strict=True):
        a, e = max(count / n, EPSILON), max(p, EPSILON)
        total += (a - e) * math.log(a / e)
    return total


class ScoreDrift:
    """PSI over a sliding window of the last `window` scores. Not thread-safe: it is fed and
    read on the event loop. Fed in bulk (server/metrics.py gathers the scores and passes
    them on at least once a second and before every read), so it works with numpy."""

    def __init__(
        self,
        edges: Sequence[float],
        proportions: Sequence[float],
        window: int = 10_000,
        min_count: int = 500,
    ) -> None:
        edges = [float(e) for e in edges]
        proportions = [float(p) for p in proportions]
        check_reference(edges, proportions)
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        if not 1 <= min_count <= window:
            raise ValueError(f"min_count must be in [1, window={window}], not {min_count}")
        self.edges = edges
        self.window = window
        self.min_count = min_count
        self.proportions = proportions
        self._edges = np.asarray(edges, dtype=np.float64)
        self._counts = np.zeros(len(proportions), dtype=np.int64)
        self._ring = np.zeros(window, dtype=np.int64)  # bin index of each score in the window
        self._next = 0  # the slot the next score goes to: the oldest once the ring is full
        self._filled = 0

    def observe(self, scores: Sequence[float] | np.ndarray, checked: bool = False) -> None:
        """Add a batch of probabilities in [0, 1]; the oldest leave once the window is full."""
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        # All checked before any is counted, so a refused batch leaves the window as it was.
        # The comparison is also false for NaN, which would otherwise land in the top bin.
        if not checked and not ((values >= 0.0) & (values <= 1.0)).all():
            bad = values[~((values >= 0.0) & (values <= 1.0))][0]
            raise ValueError(f"scores must be probabilities in [0, 1], not {bad!r}")
        if len(values) > self.window:
            values = values[-self.window :]
        n = len(values)
        if n == 0:
            return
        # Bin i holds edges[i-1] <= p < edges[i], as bisect_right (side="right") gives.
        bins = np.searchsorted(self._edges, values, side="right")
        slots = (self._next + np.arange(n)) % self.window
        # Until the ring is full it fills from slot 0, so the slots below `filled` hold
        # scores; those about to be overwritten are the oldest, and leave the window.
        leaving = slots if self._filled == self.window else slots[slots < self._filled]
        if len(leaving):
            self._counts -= np.bincount(self._ring[leaving], minlength=len(self._counts))
        self._ring[slots] = bins
        self._counts += np.bincount(bins, minlength=len(self._counts))
        self._next = int((self._next + n) % self.window)
        self._filled = min(self.window, self._filled + n)

    def count(self) -> int:
        """How many scores are in the window."""
        return self._filled

    def counts(self) -> list[int]:
        """Scores in the window per bin."""
        return [int(c) for c in self._counts]

    def psi(self) -> float | None:
        """The window's PSI, or None until min_count scores are in."""
        if self._filled < self.min_count:
            return None
        return psi(self.counts(), self.proportions)
