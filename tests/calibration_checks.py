"""What a shipped model's served probabilities must show on its test period: calibrated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.calibration import calibration_figures

# The goal: over the test period the probabilities add up to the frauds within this share.
PREDICTED_FRAUDS_TOLERANCE = 0.15


def assert_calibrated(model_dir: Path, labels: np.ndarray, scores: np.ndarray) -> None:
    """The served `scores` of the test period reproduce the card's calibration figures, add up
    to the observed frauds within the goal, and have at most half the uncalibrated ECE."""
    card = json.loads((model_dir / "metrics.json").read_text())
    figures = calibration_figures(labels, scores)
    expected = card["test"]["calibration"]
    assert figures["predicted_frauds"] == pytest.approx(expected["predicted_frauds"], rel=1e-4)
    assert figures["ece"] == pytest.approx(expected["ece"], rel=1e-3, abs=1e-7)
    observed = int(labels.sum())
    assert abs(figures["predicted_frauds"] - observed) <= PREDICTED_FRAUDS_TOLERANCE * observed
    assert figures["ece"] <= card["calibration"]["uncalibrated"]["test"]["ece"] / 2
