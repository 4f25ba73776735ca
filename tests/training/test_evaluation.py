from __future__ import annotations

import numpy as np
import pytest

from training.evaluation import at_threshold, choose_thresholds, evaluate


def test_counts_at_a_threshold() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.4, 0.8, 0.1, 0.7, 0.3])
    m = at_threshold(labels, scores, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 2, 1)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)


def test_thresholds_nest_and_meet_the_recall_target() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(5000) < 0.05).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)
    thresholds = choose_thresholds(labels, scores, review_recall=0.8)
    assert 0 <= thresholds["review"] <= thresholds["decline"] <= 1
    assert at_threshold(labels, scores, thresholds["review"])["recall"] >= 0.8
    metrics = evaluate(labels, scores, thresholds)
    assert 0.9 < metrics["roc_auc"] <= 1.0
    assert metrics["frauds"] == labels.sum()
