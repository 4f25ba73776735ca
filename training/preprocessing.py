"""The feature transform fitted on training rows, in numpy.

export/ rebuilds exactly this transform inside the ONNX graph from the saved
parameters, so the served model takes raw features; parity tests hold the two
together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A feature with (almost) no spread in training would divide by ~0.
MIN_STD = 1e-6
# Scaled values are clipped to +-this: an absurd but finite input (3e38) would
# otherwise overflow float32 to inf and reach the network as NaN. Real rows sit
# far inside it (the credit-card data's most extreme is about 100 std out).
SCALED_LIMIT = 1e4


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass(frozen=True)
class Preprocessing:
    feature_names: tuple[str, ...]
    log_mask: tuple[bool, ...]  # which features get signed_log1p before scaling
    mean: tuple[float, ...]  # of the transformed training features
    std: tuple[float, ...]
    raw_mean: tuple[float, ...]  # of the raw training features, for drift checks
    raw_std: tuple[float, ...]

    @classmethod
    def fit(
        cls, features: np.ndarray, feature_names: tuple[str, ...], log_features: tuple[str, ...]
    ) -> Preprocessing:
        mask = np.array([name in log_features for name in feature_names])
        raw = features.astype(np.float64)
        transformed = np.where(mask, signed_log1p(raw), raw)
        return cls(
            feature_names=tuple(feature_names),
            log_mask=tuple(bool(m) for m in mask),
            mean=tuple(float(v) for v in transformed.mean(axis=0)),
            std=tuple(float(max(v, MIN_STD)) for v in transformed.std(axis=0)),
            raw_mean=tuple(float(v) for v in raw.mean(axis=0)),
            raw_std=tuple(float(v) for v in raw.std(axis=0)),
        )

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Raw features to model inputs, in float32 as the ONNX graph computes them."""
        x = features.astype(np.float32)
        mask = np.array(self.log_mask)
        x = np.where(mask, np.sign(x) * np.log(np.abs(x) + np.float32(1.0)), x)
        mean = np.array(self.mean, dtype=np.float32)
        std = np.array(self.std, dtype=np.float32)
        with np.errstate(over="ignore"):  # overflow to inf is what the clip is for
            scaled = (x - mean) / std
        return np.clip(scaled, -SCALED_LIMIT, SCALED_LIMIT).astype(np.float32)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Preprocessing:
        raw = json.loads(path.read_text())
        return cls(**{key: tuple(value) for key, value in raw.items()})
