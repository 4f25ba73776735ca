"""Reason codes: the features that raised a transaction's fraud probability, by occlusion.

Each feature of the row in turn is set to its training mean (the model's own metadata) while
the others keep their values; a feature's contribution is how far the probability falls when
it alone is made ordinary: p(row) - p(row with that feature at its mean). The reasons are the
features with the largest positive contributions, at most `top`. The method needs nothing of
the model but its inputs and output, so it holds for every model the server serves, and it
costs one more model run of F + 1 rows per explained row, through the same batcher: the row
itself goes again with its occluded copies, so that every difference is taken within one run
(a row's score may differ in the last bits between batches of different sizes, which would
otherwise show as tiny reasons where there are none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


class Explainer:
    def __init__(self, feature_names: Sequence[str], baseline: Sequence[float], top: int) -> None:
        self.names = tuple(feature_names)
        self.baseline = np.asarray(baseline, dtype=np.float32)
        self.top = top
        if len(self.baseline) != len(self.names):
            raise ValueError("one baseline value per feature")

    def occluded(self, rows: np.ndarray) -> np.ndarray:
        """(n, F) rows -> (n * (F + 1), F): for each row, the row itself, then F copies, copy i
        with feature i at its training mean."""
        n, f = rows.shape
        copies = np.repeat(rows[:, None, :], f + 1, axis=1)
        diagonal = np.arange(f)
        copies[:, diagonal + 1, diagonal] = self.baseline
        return copies.reshape(n * (f + 1), f)

    def split(self, n: int, answers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's probabilities for occluded(rows) of n rows -> each row's probability
        (n,) and its features' contributions (n, F), both taken from the one run."""
        table = np.asarray(answers, np.float64).reshape(n, len(self.names) + 1)
        return table[:, 0], table[:, :1] - table[:, 1:]

    def reasons(self, rows: np.ndarray, answers: np.ndarray) -> list[list[dict[str, Any]]]:
        """Per row, its reasons, largest contribution first: [{"feature", "value",
        "contribution"}]; `answers` are the model's probabilities for occluded(rows)."""
        _, contributions = self.split(len(rows), answers)
        # Stable: of equal contributions the feature earlier in model order comes first.
        order = np.argsort(-contributions, axis=1, kind="stable")[:, : self.top]
        out = []
        for row, picks, contribution in zip(
            rows.tolist(), order.tolist(), contributions, strict=True
        ):
            out.append(
                [
                    {
                        "feature": self.names[i],
                        # As the model saw it, in float32's shortest form (-9.150951, not
                        # -9.150951385498047); a missing value (the model fills it) is null.
                        "value": None if math.isnan(row[i]) else float(str(np.float32(row[i]))),
                        "contribution": float(contribution[i]),
                    }
                    for i in picks
                    if contribution[i] > 0.0
                ]
            )
        return out
