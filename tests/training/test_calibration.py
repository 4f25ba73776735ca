"""Calibration: each map fits what it should, the choice follows held-out Brier scores, and
the figures metrics.json records mean what they say."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from training import calibration
from training.calibration import CalibrationError


def inflated(
    rows: int, seed: int, a: float = 0.8, b: float = -1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose true fraud probability is sigmoid(a * logit(score) + b): what class
    weights do to a network, with a Platt map as the exact cure."""
    rng = np.random.default_rng(seed)
    scores = rng.beta(0.3, 3.0, rows)
    truth = calibration.sigmoid(a * calibration.logit(scores) + b)
    return scores, (rng.random(rows) < truth).astype(np.int64)


def test_platt_recovers_the_map_that_made_the_labels() -> None:
    scores, labels = inflated(200_000, seed=1)
    spec = calibration.fit_platt(scores, labels)
    assert spec["method"] == "platt"
    assert spec["a"] == pytest.approx(0.8, abs=0.03)
    assert spec["b"] == pytest.approx(-1.5, abs=0.06)


def test_platt_keeps_the_ranking_exactly() -> None:
    scores, labels = inflated(5000, seed=2)
    calibrated = calibration.apply(calibration.fit_platt(scores, labels), scores)
    order = np.argsort(scores)
    inside = (scores[order] > calibration.EPSILON) & (scores[order] < 1 - calibration.EPSILON)
    steps = np.diff(calibrated[order])
    # Strictly increasing where the scores are; scores clipped to EPSILON tie, as they did.
    assert np.all(steps[inside[1:] & inside[:-1]] > 0) and np.all(steps >= 0)


def test_isotonic_is_the_monotone_fit_drawn_between_its_knots() -> None:
    from sklearn.isotonic import IsotonicRegression

    scores, labels = inflated(20_000, seed=3)
    spec = calibration.fit_isotonic(scores, labels)
    others = np.random.default_rng(4).random(1000)
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(scores, labels)
    np.testing.assert_allclose(
        calibration.apply(spec, others), reference.predict(others), atol=1e-12
    )
    assert np.all(np.diff(spec["y"]) >= 0)
    # Flat outside the fitted range.
    assert calibration.apply(spec, np.array([-1.0, 2.0])).tolist() == [spec["y"][0], spec["y"][-1]]


def test_auto_keeps_platt_for_a_sigmoid_shaped_error() -> None:
    scores, labels = inflated(40_000, seed=5)
    spec, measured = calibration.choose(scores, labels)
    assert set(measured) == {"platt", "isotonic"}
    assert measured["platt"]["log_loss"] < measured["isotonic"]["log_loss"]
    assert spec["method"] == "platt"


def test_auto_takes_isotonic_when_the_truth_is_a_step() -> None:
    # Twenty distinct scores (a model of a few leaves, say), and a fraud rate of 2 % below 0.5
    # and 60 % above, whatever the score within each half: no sigmoid of the logit draws a
    # step, isotonic does, and the scores' ties are the model's own.
    rng = np.random.default_rng(6)
    scores = (rng.integers(0, 20, 40_000) + 0.5) / 20
    labels = (rng.random(40_000) < np.where(scores < 0.5, 0.02, 0.6)).astype(np.int64)
    spec, measured = calibration.choose(scores, labels)
    assert measured["isotonic"]["log_loss"] < measured["platt"]["log_loss"]
    assert spec["method"] == "isotonic"
    low, high = calibration.apply(spec, np.array([0.25, 0.75]))
    assert low == pytest.approx(0.02, abs=0.01) and high == pytest.approx(0.6, abs=0.02)


def test_auto_refuses_a_method_that_costs_the_ranking() -> None:
    # Few frauds, spread thin: isotonic flattens most of the range into ties and loses
    # average precision on held-out rows; Platt keeps the order.
    scores, labels = inflated(20_000, seed=9, a=1.0, b=-3.0)
    spec, measured = calibration.choose(scores, labels)
    raw = average_precision_score(labels, scores)
    assert measured["isotonic"]["average_precision"] < raw - calibration.RANKING_TOLERANCE
    assert spec["method"] == "platt"


def test_a_method_asked_for_is_kept_and_both_are_still_measured() -> None:
    scores, labels = inflated(10_000, seed=7)
    spec, measured = calibration.choose(scores, labels, "isotonic")
    assert spec["method"] == "isotonic" and set(measured) == {"platt", "isotonic"}


def test_too_few_frauds_to_calibrate_is_a_clear_error() -> None:
    scores = np.linspace(0.0, 1.0, 1000)
    labels = np.zeros(1000, np.int64)
    labels[[10, 500, 990]] = 1
    with pytest.raises(CalibrationError, match=r"at least 5 frauds .* it has 3 and 997"):
        calibration.choose(scores, labels)


def test_calibration_after_the_fact_cuts_the_error_the_weights_made() -> None:
    scores, labels = inflated(100_000, seed=8)
    fitted, later = slice(0, 50_000), slice(50_000, None)
    spec, _ = calibration.choose(scores[fitted], labels[fitted])
    before = calibration.calibration_figures(labels[later], scores[later])
    after = calibration.calibration_figures(labels[later], calibration.apply(spec, scores[later]))
    assert after["ece"] < before["ece"] / 4
    assert after["brier"] < before["brier"]
    observed = after["observed_frauds"]
    assert observed == int(labels[later].sum())
    assert abs(after["predicted_frauds"] - observed) < 0.05 * observed
    assert before["predicted_frauds"] > 1.5 * observed


def test_ece_uses_equal_mass_bins() -> None:
    labels = np.array([0, 0, 0, 1] * 25)
    probabilities = np.linspace(0.0, 1.0, 100)
    table = calibration.reliability(labels, probabilities, 10)
    assert [b["rows"] for b in table] == [10] * 10
    # Bin i holds probabilities i/10 .. about (i+1)/10 and a quarter of frauds in each.
    for i, b in enumerate(table):
        assert b["observed"] in (0.2, 0.3)
        assert b["predicted"] == pytest.approx(np.mean(probabilities[10 * i : 10 * i + 10]))
    expected = np.mean([abs(b["predicted"] - b["observed"]) for b in table])
    assert calibration.expected_calibration_error(labels, probabilities) == pytest.approx(expected)
    # A perfectly calibrated constant has none: 5 frauds in every bin of 20.
    labels = np.array([0, 0, 0, 1] * 50)
    assert calibration.expected_calibration_error(labels, np.full(200, 0.25)) == pytest.approx(0.0)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown calibration method 'beta'"):
        calibration.apply({"method": "beta"}, np.zeros(3))
    with pytest.raises(ValueError, match="choose from platt, isotonic"):
        calibration.choose(np.zeros(10), np.zeros(10), "none")


def test_the_reliability_table_bins_by_probability_on_a_log_scale() -> None:
    probabilities = np.array([0.0, 5e-5, 2e-4, 0.3, 0.5, 0.9, 1.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    table = calibration.reliability_by_probability(labels, probabilities)
    assert sum(b["rows"] for b in table) == len(labels)
    first, last = table[0], table[-1]
    assert (first["from"], first["to"], first["rows"]) == (0.0, 1e-4, 2)
    # 1.0 falls in the last range, closed at 1; 0.5 and 0.9 with it.
    assert last["to"] == 1.0 and last["rows"] == 3 and last["observed"] == 1.0
    assert last["predicted"] == pytest.approx(0.8)
    assert all(b["from"] <= b["predicted"] <= b["to"] for b in table)
    edges = calibration.RELIABILITY_EDGES
    assert edges[1] == 1e-4 and edges[-1] == 1.0 and edges[4] == pytest.approx(1e-3)
