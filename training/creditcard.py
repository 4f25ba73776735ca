"""The Kaggle ULB credit-card data set (creditcard.csv), or a file of its schema: a preset of
the table loader with its columns fixed."""

from __future__ import annotations

from pathlib import Path

from training.datasets import Dataset
from training.fetch_creditcard import file_digest
from training.table import TableError, read_csv_table, table_dataset

PCA_COLUMNS = tuple(f"V{i}" for i in range(1, 29))
# Time is seconds since the first transaction of a two-day capture: it orders
# the split but is not a feature, since its values in service lie beyond
# anything seen in training.
FEATURES = (*PCA_COLUMNS, "Amount")
COLUMNS = ("Time", *FEATURES, "Class")
LABEL = "Class"
TIME = "Time"
LOG_FEATURES = ("Amount",)

# The old name: every problem with the file is a TableError now.
DataFormatError = TableError


def load_creditcard(path: str | Path) -> Dataset:
    path = Path(path)
    frame = read_csv_table(path)
    if tuple(frame.columns) != COLUMNS:
        raise DataFormatError(f"{path}: expected columns {COLUMNS}, got {tuple(frame.columns)}")
    return table_dataset(
        frame,
        where=str(path),
        label=LABEL,
        time=TIME,
        features=FEATURES,
        log_features=LOG_FEATURES,
        fill_missing=None,
        source="creditcard",
        sha256=file_digest(path, "sha256"),
    )
