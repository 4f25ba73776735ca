"""Load the Kaggle ULB credit-card data set (creditcard.csv) or a file of its schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.datasets import Dataset
from training.fetch_creditcard import file_digest

PCA_COLUMNS = tuple(f"V{i}" for i in range(1, 29))
# Time is seconds since the first transaction of a two-day capture: it orders
# the split but is not a feature, since its values in service lie beyond
# anything seen in training.
FEATURES = (*PCA_COLUMNS, "Amount")
COLUMNS = ("Time", *FEATURES, "Class")


class DataFormatError(ValueError):
    pass


def load_creditcard(path: str | Path) -> Dataset:
    path = Path(path)
    frame = pd.read_csv(path)
    if tuple(frame.columns) != COLUMNS:
        raise DataFormatError(f"{path}: expected columns {COLUMNS}, got {tuple(frame.columns)}")
    if frame.isna().any().any():
        raise DataFormatError(f"{path}: missing values")
    labels = frame["Class"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise DataFormatError(f"{path}: Class must be 0 or 1")
    features = frame[list(FEATURES)].to_numpy(dtype=np.float32)
    if not np.isfinite(features).all():
        raise DataFormatError(f"{path}: non-finite feature values")
    return Dataset(
        features=features,
        labels=labels.astype(np.int8),
        times=frame["Time"].to_numpy(dtype=np.float64),
        feature_names=FEATURES,
        log_features=("Amount",),
        source="creditcard",
        sha256=file_digest(path, "sha256"),
    )
