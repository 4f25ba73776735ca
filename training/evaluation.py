"""Metrics, and decision thresholds chosen on validation only."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from training.calibration import calibration_figures

DECISIONS = ("review", "decline")


def choose_thresholds(
    labels: np.ndarray, scores: np.ndarray, review_recall: float
) -> dict[str, float]:
    """DECLINE at the best F1; REVIEW at the highest threshold keeping `review_recall`.

    REVIEW is never above DECLINE, so the bands APPROVE < REVIEW < DECLINE nest.
    """
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # precision/recall have one more entry than thresholds (the recall-0 end).
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.where(
        precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0
    )
    decline = float(thresholds[int(np.argmax(f1))])
    reaching = thresholds[recall >= review_recall]
    review = float(reaching.max()) if len(reaching) else float(thresholds.min())
    return {"review": min(review, decline), "decline": decline}


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = scores >= threshold
    fraud = labels == 1
    tp = int(np.sum(flagged & fraud))
    fp = int(np.sum(flagged & ~fraud))
    fn = int(np.sum(~flagged & fraud))
    tn = int(np.sum(~flagged & ~fraud))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def evaluate(
    labels: np.ndarray, scores: np.ndarray, thresholds: dict[str, float]
) -> dict[str, object]:
    return {
        "rows": len(labels),
        "frauds": int(labels.sum()),
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "at_thresholds": {
            name: at_threshold(labels, scores, thresholds[name]) for name in DECISIONS
        },
        "calibration": calibration_figures(labels, scores),
    }
