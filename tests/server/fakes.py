"""A scorer with no model file: lets the HTTP and service layers be tested alone."""

from __future__ import annotations

import numpy as np

from server.artifact import ModelInfo

FEATURES = ("amount", "hour", "distance")


def fake_info(**overrides: object) -> ModelInfo:
    fields: dict[str, object] = {
        "name": "fake",
        "version": "7",
        "input_name": "features",
        "output_name": "fraud_probability",
        "feature_names": FEATURES,
        "review_threshold": 0.5,
        "decline_threshold": 0.9,
        "metrics": {},
        "feature_mean": (0.0, 0.0, 0.0),
        "feature_std": (1.0, 1.0, 1.0),
        "created_at": "2026-01-01T00:00:00+00:00",
        "sha256": "0" * 64,
    }
    fields.update(overrides)
    return ModelInfo(**fields)  # type: ignore[arg-type]


class FakeScorer:
    """Probability = the first feature clipped to [0, 1], so tests choose the decision."""

    def __init__(self, fail: bool = False) -> None:
        self.info = fake_info()
        self.fail = fail
        self.calls: list[np.ndarray] = []

    def predict(self, features: np.ndarray) -> np.ndarray:
        self.calls.append(features)
        if self.fail:
            raise RuntimeError("boom")
        return np.clip(features[:, 0], 0.0, 1.0).astype(np.float32)
