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

from training.datasets import DataError

# A feature with (almost) no spread in training would divide by ~0.
MIN_STD = 1e-6
# Scaled values are clipped to +-this: an absurd but finite input (3e38) would
# otherwise overflow float32 to inf and reach the network as NaN. Real rows sit
# far inside it (the credit-card data's most extreme is about 100 std out).
SCALED_LIMIT = 1e4
# How a missing cell (empty, NaN or +-inf) can be filled: with the fit rows' median.
FILL_STRATEGIES = ("median",)


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
    # Filling of missing cells, first of all steps: a non-finite raw value (NaN or +-inf)
    # becomes its feature's fill value. None / () = no filling, as before the option existed.
    fill_missing: str | None = None
    fill_values: tuple[float, ...] = ()  # float32-exact, one per feature

    def __post_init__(self) -> None:
        if self.fill_missing is not None and self.fill_missing not in FILL_STRATEGIES:
            raise ValueError(f"unknown fill strategy {self.fill_missing!r}")
        if self.fill_values and len(self.fill_values) != len(self.feature_names):
            raise ValueError("one fill value per feature is needed")
        if (self.fill_missing is None) != (not self.fill_values):
            raise ValueError("a fill strategy and its fill values come together")

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        feature_names: tuple[str, ...],
        log_features: tuple[str, ...],
        fill_missing: str | None = None,
    ) -> Preprocessing:
        """Every statistic from `features`, which must be the fit rows only.

        With a fill strategy, missing cells are allowed: the fill values are the medians of
        each feature's present values; raw_mean / raw_std describe the present values (what
        a drift check compares live values with), and mean / std the filled, transformed
        values the network is trained on.
        """
        mask = np.array([name in log_features for name in feature_names])
        raw = features.astype(np.float64)
        fill: tuple[float, ...] = ()
        if fill_missing is not None:
            if fill_missing not in FILL_STRATEGIES:
                raise DataError(
                    f"unknown fill strategy {fill_missing!r}; known: {', '.join(FILL_STRATEGIES)}"
                )
            present = np.isfinite(raw)
            seen = present.any(axis=0)
            empty = [name for name, has in zip(feature_names, seen, strict=True) if not has]
            if empty:
                raise DataError(
                    f"feature {empty[0]!r} has no value in the {len(raw)} fit rows, so there "
                    "is no median to fill its missing cells with"
                )
            raw = np.where(present, raw, np.nan)
            # The graph fills in float32; rounding here makes the statistics below see
            # exactly the values the graph will substitute.
            fill = tuple(float(np.float32(v)) for v in np.nanmedian(raw, axis=0))
            raw_mean = np.nanmean(raw, axis=0)
            raw_std = np.nanstd(raw, axis=0)
            raw = np.where(present, raw, np.array(fill))
        else:
            raw_mean, raw_std = raw.mean(axis=0), raw.std(axis=0)
        transformed = np.where(mask, signed_log1p(raw), raw)
        return cls(
            feature_names=tuple(feature_names),
            log_mask=tuple(bool(m) for m in mask),
            mean=tuple(float(v) for v in transformed.mean(axis=0)),
            std=tuple(float(max(v, MIN_STD)) for v in transformed.std(axis=0)),
            raw_mean=tuple(float(v) for v in raw_mean),
            raw_std=tuple(float(v) for v in raw_std),
            fill_missing=fill_missing,
            fill_values=fill,
        )

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Raw features to model inputs, in float32 as the ONNX graph computes them."""
        x = features.astype(np.float32)
        if self.fill_values:
            x = np.where(np.isfinite(x), x, np.array(self.fill_values, dtype=np.float32))
        mask = np.array(self.log_mask)
        x = np.where(mask, np.sign(x) * np.log(np.abs(x) + np.float32(1.0)), x)
        mean = np.array(self.mean, dtype=np.float32)
        std = np.array(self.std, dtype=np.float32)
        with np.errstate(over="ignore"):  # overflow to inf is what the clip is for
            scaled = (x - mean) / std
        return np.clip(scaled, -SCALED_LIMIT, SCALED_LIMIT).astype(np.float32)

    def missing_values(self) -> dict[str, object] | None:
        """The fill as the ONNX metadata states it, or None when nothing is filled."""
        if self.fill_missing is None:
            return None
        return {"strategy": self.fill_missing, "fill": list(self.fill_values)}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Preprocessing:
        raw = json.loads(path.read_text())
        # Lists become tuples; a strategy stays a string (or None).
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
