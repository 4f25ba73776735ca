"""One PNG: PR and ROC curves (validation and test), the test score histogram per class, and
the reliability diagram (validation and test, and the test period before calibration)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from training.calibration import reliability_by_probability

# Log axes; a bin in which no fraud was observed is drawn at this floor.
RELIABILITY_FLOOR = 1e-5


def save_curves(
    path: Path,
    parts: dict[str, tuple[np.ndarray, np.ndarray]],
    thresholds: dict[str, float],
    title: str,
    uncalibrated: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    fig, (pr_ax, roc_ax, hist_ax, rel_ax) = plt.subplots(1, 4, figsize=(21, 4.8))
    for name, (labels, scores) in parts.items():
        precision, recall, _ = precision_recall_curve(labels, scores)
        pr_ax.plot(recall, precision, label=name)
        fpr, tpr, _ = roc_curve(labels, scores)
        roc_ax.plot(fpr, tpr, label=name)
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    labels, scores = parts["test"]
    bins = np.linspace(0.0, 1.0, 51)
    hist_ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="legitimate", log=True)
    hist_ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="fraud", log=True)
    for name, value in thresholds.items():
        hist_ax.axvline(
            value,
            linestyle="--",
            color="black" if name == "decline" else "grey",
            label=f"{name} {value:.3f}",
        )
    hist_ax.set(xlabel="fraud probability", ylabel="rows (log)", title="Test scores by class")
    curves = dict(parts)
    if uncalibrated is not None:
        curves["test, uncalibrated"] = uncalibrated
    for name, (labels, scores) in curves.items():
        table = reliability_by_probability(labels, scores)
        rel_ax.plot(
            [max(b["predicted"], RELIABILITY_FLOOR) for b in table],
            [max(b["observed"], RELIABILITY_FLOOR) for b in table],
            marker="o",
            markersize=3,
            linestyle=":" if "uncalibrated" in name else "-",
            label=name,
        )
    rel_ax.plot([RELIABILITY_FLOOR, 1], [RELIABILITY_FLOOR, 1], color="grey", linestyle=":")
    rel_ax.set(
        xscale="log",
        yscale="log",
        xlabel="mean predicted probability",
        ylabel="observed fraud rate",
        title="Reliability (bins of probability, 3 per decade)",
    )
    for ax in (pr_ax, roc_ax, hist_ax, rel_ax):
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
