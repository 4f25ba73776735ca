"""One PNG: PR and ROC curves (validation and test) and the test score histogram per class."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve


def save_curves(
    path: Path,
    parts: dict[str, tuple[np.ndarray, np.ndarray]],
    thresholds: dict[str, float],
    title: str,
) -> None:
    fig, (pr_ax, roc_ax, hist_ax) = plt.subplots(1, 3, figsize=(16, 4.8))
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
    for ax in (pr_ax, roc_ax, hist_ax):
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
