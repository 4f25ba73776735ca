"""A data set in time order, and the honest time-ordered split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A time split needs at least this many frauds in each part: the fit rows to learn from,
# validation to stop early and choose thresholds on, test to measure. With fewer, average
# precision and the thresholds swing on a single case.
MIN_FRAUDS_PER_PART = 3
PART_NAMES = ("fit", "validation", "test")


class DataError(ValueError):
    """Data that cannot be trained on. The message is the whole user-facing sentence."""


@dataclass(frozen=True)
class Dataset:
    features: np.ndarray  # (rows, F) float32, raw values
    labels: np.ndarray  # (rows,) int8, 1 = fraud
    times: np.ndarray  # (rows,) float64, seconds; defines the order
    feature_names: tuple[str, ...]
    # Heavy-tailed features that get sign(x) * log(1 + |x|) before scaling.
    log_features: tuple[str, ...]
    source: str
    sha256: str  # of the file read, or of the generated arrays
    # The version of the shared event-feature definitions the features were computed with
    # (features.events.DEFINITIONS), or None for features that came as they are.
    definitions: str | None = None

    def __post_init__(self) -> None:
        rows = len(self.labels)
        if self.features.shape != (rows, len(self.feature_names)):
            raise ValueError(f"features shape {self.features.shape} does not match labels/names")
        if len(self.times) != rows:
            raise ValueError("times and labels differ in length")
        unknown = set(self.log_features) - set(self.feature_names)
        if unknown:
            raise ValueError(f"log features not in feature names: {sorted(unknown)}")

    def take(self, index: np.ndarray | slice) -> Dataset:
        return Dataset(
            self.features[index],
            self.labels[index],
            self.times[index],
            self.feature_names,
            self.log_features,
            self.source,
            self.sha256,
            self.definitions,
        )

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Split:
    fit: Dataset
    validation: Dataset
    test: Dataset


def time_split(
    data: Dataset,
    test_fraction: float,
    validation_fraction: float,
    min_frauds: int = MIN_FRAUDS_PER_PART,
) -> Split:
    """Earliest rows to fit, then validation, then the latest rows to test.

    A random split would let the model see the future of the very fraud
    campaigns it is tested on, and report a score it cannot reach in service.
    """
    order = np.argsort(data.times, kind="stable")
    ordered = data.take(order)
    n = len(ordered)
    test_start = _cut(ordered.times, round(n * (1.0 - test_fraction)))
    val_start = _cut(ordered.times, round(test_start * (1.0 - validation_fraction)))
    if not 0 < val_start < test_start < n:
        raise DataError(
            f"a time split of {n} rows (test fraction {test_fraction}, validation fraction "
            f"{validation_fraction}) leaves an empty part; use more rows"
        )
    parts = Split(
        ordered.take(slice(0, val_start)),
        ordered.take(slice(val_start, test_start)),
        ordered.take(slice(test_start, n)),
    )
    frauds = {name: int(getattr(parts, name).labels.sum()) for name in PART_NAMES}
    if min(frauds.values()) < min_frauds:
        counts = ", ".join(f"{name} {count}" for name, count in frauds.items())
        raise DataError(
            f"too few frauds for a time split: {counts} (of {int(data.labels.sum())} in "
            f"{n} rows); each part needs at least {min_frauds}. Use more rows or a longer "
            "period with more fraud"
        )
    return parts


def _cut(times: np.ndarray, index: int) -> int:
    """Move a cut back to the first row of its timestamp, so rows sharing a moment stay
    together on the later side and no part holds a moment an earlier part has seen."""
    if index >= len(times):
        return len(times)
    return int(np.searchsorted(times, times[index], side="left"))
