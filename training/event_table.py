"""Load a raw mobile-money event table (CSV or Parquet) as a Dataset of the shared features.

The table has the columns of features.events.EVENT_FIELDS (account_opened_at may be left out,
or empty where unknown) and a 0/1 label column. Every event is checked as the server checks
it, and the features are folded over the events in time order (ties in file order) by the
same code the server runs on each event it scores. Rows are named as in training/table.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from features.events import (
    DEFINITIONS,
    EVENT_FIELDS,
    FEATURES,
    ID_FIELDS,
    LOG_FEATURES,
    features_over_history,
)
from features.reading import EventError, event_from_mapping
from training.datasets import Dataset
from training.fetch_creditcard import file_digest
from training.table import ROW_NOTE, TableError, _labels, _show, read_table

SOURCE = "events"
OPTIONAL_FIELDS = ("account_opened_at",)
NUMBER_FIELDS = ("timestamp", "amount", "balance_before", "lat", "lon", "account_opened_at")


def load_events(path: str | Path, label: str) -> Dataset:
    """The events of `path` as a Dataset in time order; TableError names column and row."""
    path = Path(path)
    frame = read_table(path)
    return events_dataset(frame, where=str(path), label=label, sha256=file_digest(path, "sha256"))


def events_dataset(frame: pd.DataFrame, *, where: str, label: str, sha256: str) -> Dataset:
    """A frame already read (from the file `where`) as a Dataset; see load_events."""
    if label in EVENT_FIELDS:
        raise TableError(f"the label cannot be the event field {label!r}")
    required = [name for name in EVENT_FIELDS if name not in OPTIONAL_FIELDS]
    absent = [name for name in (*required, label) if name not in frame.columns]
    if absent:
        raise TableError(
            f"event table {where} has no column {', '.join(map(repr, absent))}; an event table "
            f"has {', '.join(EVENT_FIELDS)} (account_opened_at may be left out) and the label"
        )
    labels = _labels(frame[label], label)
    events = []
    names = [name for name in EVENT_FIELDS if name in frame.columns]
    lists = {name: frame[name].tolist() for name in names}
    for row in range(len(frame)):
        item = {name: _cell(name, lists[name][row]) for name in names}
        try:
            events.append(event_from_mapping({k: v for k, v in item.items() if v is not None}))
        except EventError as exc:
            raise TableError(
                f"event table {where}, column {exc.field!r}, data row {row + 1} "
                f"({_show(lists[exc.field][row]) if exc.field in lists else 'absent'}): "
                f"{exc.message} ({ROW_NOTE})"
            ) from None
    times = np.fromiter((e.timestamp for e in events), np.float64, len(events))
    order = np.argsort(times, kind="stable")
    values = features_over_history(events[i] for i in order).astype(np.float32)
    return Dataset(
        features=values,
        labels=labels[order],
        times=times[order],
        feature_names=FEATURES,
        log_features=LOG_FEATURES,
        source=SOURCE,
        sha256=sha256,
        definitions=DEFINITIONS,
    )


def _cell(name: str, value: object) -> object:
    """A cell as a JSON body would hold it: None for an empty cell, an identifier read as a
    number (CSV readers do that to 42) as its text, a number read as text as the number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if name in ID_FIELDS and isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)
    if name in NUMBER_FIELDS and isinstance(value, str):
        # One unreadable cell makes a CSV reader keep the whole column as text.
        try:
            number = float(value)
        except ValueError:
            return value
        return None if math.isnan(number) else number
    return value
