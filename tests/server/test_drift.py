"""PSI of a sliding window of scores against a reference distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.drift import EPSILON, ScoreDrift


def fraud_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Probabilities piled up near 0 with a thin tail, like a fraud model's."""
    return rng.beta(0.3, 30.0, n)


def reference(scores: np.ndarray, bins: int = 10) -> tuple[list[float], list[float]]:
    """Deciles as export/artifact.py cuts them: bin i holds edges[i-1] <= p < edges[i]."""
    edges = np.unique(np.quantile(scores, np.arange(1, bins) / bins))
    counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(edges) + 1)
    return edges.tolist(), (counts / len(scores)).tolist()


def numpy_psi(edges: list[float], proportions: list[float], window: np.ndarray) -> float:
    counts = np.bincount(np.searchsorted(edges, window, side="right"), minlength=len(proportions))
    live = np.maximum(counts / len(window), EPSILON)
    expected = np.maximum(np.asarray(proportions), EPSILON)
    return float(np.sum((live - expected) * np.log(live / expected)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def drift(rng: np.random.Generator) -> ScoreDrift:
    return ScoreDrift(*reference(fraud_like(rng, 100_000)))


def test_scores_from_the_reference_distribution_barely_drift(
    drift: ScoreDrift, rng: np.random.Generator
) -> None:
    drift.observe(fraud_like(rng, 10_000).tolist())
    psi = drift.psi()
    assert psi is not None and 0.0 <= psi < 0.02


@pytest.mark.parametrize("factor", [4.0, 10.0])
def test_scores_multiplied_up_drift_clearly(
    drift: ScoreDrift, rng: np.random.Generator, factor: float
) -> None:
    drift.observe(np.minimum(fraud_like(rng, 10_000) * factor, 1.0).tolist())
    psi = drift.psi()
    assert psi is not None and psi > 0.2


def test_psi_is_computed_over_the_window_contents(rng: np.random.Generator) -> None:
    edges, proportions = reference(fraud_like(rng, 50_000))
    drift = ScoreDrift(edges, proportions, window=1000, min_count=100)
    seen: list[float] = []
    # Uneven batches, half of them shifted, wrapping round the ring many times.
    for i in range(300):
        batch = fraud_like(rng, int(rng.integers(1, 80))) * (3.0 if i % 2 else 1.0)
        batch = np.minimum(batch, 1.0).tolist()
        drift.observe(batch)
        seen.extend(batch)
        if i % 25 == 0 and len(seen) >= 100:
            window = np.asarray(seen[-1000:])
            assert drift.count() == len(window)
            assert drift.psi() == pytest.approx(numpy_psi(edges, proportions, window), rel=1e-12)


def test_old_scores_leave_the_window(drift: ScoreDrift, rng: np.random.Generator) -> None:
    drift.observe(np.minimum(fraud_like(rng, 10_000) * 4.0, 1.0).tolist())
    shifted = drift.psi()
    assert shifted is not None and shifted > 0.2
    drift.observe(fraud_like(rng, 5_000).tolist())  # half the window: still drifting
    half = drift.psi()
    assert half is not None and 0.02 < half < shifted
    drift.observe(fraud_like(rng, 5_000).tolist())  # the shifted scores are all gone now
    recovered = drift.psi()
    assert recovered is not None and recovered < 0.02
    assert drift.count() == 10_000


def test_a_batch_larger_than_the_window_keeps_its_newest_scores(rng: np.random.Generator) -> None:
    edges, proportions = reference(fraud_like(rng, 10_000))
    drift = ScoreDrift(edges, proportions, window=100, min_count=10)
    batch = np.minimum(fraud_like(rng, 1000) * np.repeat([1.0, 5.0], 500), 1.0).tolist()
    drift.observe(batch)
    assert drift.count() == 100
    expected = numpy_psi(edges, proportions, np.asarray(batch[-100:]))
    assert drift.psi() == pytest.approx(expected, rel=1e-12)


def test_no_psi_below_min_count(drift: ScoreDrift, rng: np.random.Generator) -> None:
    assert drift.psi() is None and drift.count() == 0
    drift.observe(fraud_like(rng, 499).tolist())
    assert drift.psi() is None and drift.count() == 499
    drift.observe([0.01])
    assert drift.psi() is not None and drift.count() == 500


def test_a_score_on_an_edge_counts_in_the_bin_above() -> None:
    drift = ScoreDrift([0.5], [0.5, 0.5], window=4, min_count=4)
    drift.observe([0.5, 0.5, 0.5, 0.5])
    assert drift.psi() == pytest.approx(
        (EPSILON - 0.5) * math.log(EPSILON / 0.5) + (1.0 - 0.5) * math.log(1.0 / 0.5)
    )


@pytest.mark.parametrize(
    ("edges", "proportions", "window", "min_count", "reason"),
    [
        ([0.1, 0.2], [0.5, 0.5], 100, 10, "bins"),
        ([0.2, 0.1], [0.3, 0.3, 0.4], 100, 10, "increasing"),
        ([0.1, 0.1], [0.3, 0.3, 0.4], 100, 10, "increasing"),
        ([0.1, math.nan], [0.3, 0.3, 0.4], 100, 10, "finite"),
        ([0.1], [1.2, -0.2], 100, 10, "non-negative"),
        ([0.1], [0.5, 0.4], 100, 10, "sum"),
        ([0.1], [0.5, math.nan], 100, 10, "finite"),
        ([0.1], [0.5, 0.5], 0, 0, "window"),
        ([0.1], [0.5, 0.5], 100, 0, "min_count"),
        ([0.1], [0.5, 0.5], 100, 101, "min_count"),
    ],
)
def test_bad_settings_are_refused(
    edges: list[float], proportions: list[float], window: int, min_count: int, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        ScoreDrift(edges, proportions, window=window, min_count=min_count)


@pytest.mark.parametrize("bad", [math.nan, -0.1, 1.5, math.inf])
def test_a_batch_with_a_non_probability_is_refused_whole(bad: float) -> None:
    drift = ScoreDrift([0.5], [0.5, 0.5], window=10, min_count=1)
    drift.observe([0.2])
    before = drift.psi()
    with pytest.raises(ValueError, match="probabilities"):
        drift.observe([0.9, 0.9, bad])
    assert drift.count() == 1 and drift.psi() == before
