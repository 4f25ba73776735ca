"""Load a transaction table (CSV or Parquet) as a Dataset: a 0/1 label, a time, numeric features.

Rows are named by their data row number: row 1 is the first row after the CSV header (the
file's second line, when no quoted field spans lines), or the first row of a Parquet file.

Missing cells: an empty cell, NaN, and +-inf (or a number beyond float32's range) all count
as missing. Without a fill strategy any missing feature cell is an error; with "median" the
Dataset keeps them as NaN, and Preprocessing.fit fills them from the fit rows alone, after the
time split, so that no statistic of the later rows leaks into training.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from training.datasets import DataError, Dataset
from training.fetch_creditcard import file_digest
from training.preprocessing import FILL_STRATEGIES

SOURCE = "table"
READERS = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}
LABEL_WORDS = {"true": 1, "false": 0, "1": 1, "0": 0}
FILL_HINT = "pass --fill-missing median to fill them with the median of the fit rows"
# How messages count rows (the header, if any, is not a data row).
ROW_NOTE = "data row 1 is the first after the header"
# Longer cell values are cut in messages.
SHOWN_CHARS = 40
EPOCH = pd.Timestamp(0, tz="UTC")


class TableError(DataError):
    """A table that cannot be trained on. The message is the whole user-facing sentence."""


def check_column_choice(
    label: str,
    time: str,
    features: Sequence[str] | None,
    log_features: Sequence[str],
    fill_missing: str | None,
) -> None:
    """The checks that need only the names asked for, not the file."""
    for role, name in (("label", label), ("time", time)):
        if not isinstance(name, str) or not name:
            raise TableError(f"the {role} column needs a name")
    if label == time:
        raise TableError(f"the label and the time cannot both be column {label!r}")
    if features is not None:
        if not features:
            raise TableError("the feature list is empty")
        _check_names("feature", features)
        for role, name in (("label", label), ("time", time)):
            if name in features:
                raise TableError(f"the {role} column {name!r} cannot also be a feature")
    _check_names("log feature", log_features)
    if features is not None:
        for name in log_features:
            if name not in features:
                raise TableError(
                    f"log feature {name!r} is not among the features ({', '.join(features)})"
                )
    if fill_missing is not None and fill_missing not in FILL_STRATEGIES:
        raise TableError(
            f"unknown fill-missing strategy {fill_missing!r}; known: {', '.join(FILL_STRATEGIES)}"
        )


def _check_names(role: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if not name:
            raise TableError(f"an empty {role} name (a doubled or trailing comma?)")
        if name in seen:
            raise TableError(f"{role} {name!r} is listed twice")
        seen.add(name)


def read_table(path: str | Path) -> pd.DataFrame:
    """The whole file, CSV or Parquet by its extension."""
    path = Path(path)
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise TableError(
            f"cannot read {path}: unknown extension {path.suffix or '(none)'!r}; "
            f"a table is {', '.join(READERS)}"
        )
    return _read(path, kind)


def read_csv_table(path: str | Path) -> pd.DataFrame:
    """A CSV file whatever its name (the credit-card preset reads its file this way)."""
    return _read(Path(path), "CSV")


def _read(path: Path, kind: str) -> pd.DataFrame:
    if not path.is_file():
        raise TableError(f"cannot read {path}: no such file")
    try:
        frame = pd.read_csv(path) if kind == "CSV" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise TableError(f"table {path} is empty: no header, no rows") from None
    except Exception as exc:  # pandas and pyarrow raise many kinds; each is one line here
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TableError(f"cannot read {path} as {kind}: {reason}") from None
    frame.columns = [str(c) for c in frame.columns]
    if len(frame.columns) == 0:
        raise TableError(f"table {path} has no columns")
    if len(frame) == 0:
        raise TableError(f"table {path} has a header but no data rows")
    doubled = frame.columns[frame.columns.duplicated()]
    if len(doubled):
        raise TableError(f"table {path} has column {doubled[0]!r} twice")
    return frame


def load_table(
    path: str | Path,
    label: str,
    time: str,
    features: Sequence[str] | None = None,
    log_features: Sequence[str] = (),
    fill_missing: str | None = None,
    source: str | None = None,
) -> Dataset:
    """A table as a Dataset, rows in file order (time_split orders them by time).

    Without `features`, every numeric column but the label and the time is a feature, in
    file order; the columns left out are named on stdout. A constant feature is kept, with
    a warning on stderr. Every problem raises TableError naming the column and the row.
    """
    path = Path(path)
    check_column_choice(label, time, features, log_features, fill_missing)
    frame = read_table(path)
    return table_dataset(
        frame,
        where=str(path),
        label=label,
        time=time,
        features=features,
        log_features=log_features,
        fill_missing=fill_missing,
        source=source or SOURCE,
        sha256=file_digest(path, "sha256"),
    )


def table_dataset(
    frame: pd.DataFrame,
    *,
    where: str,
    label: str,
    time: str,
    features: Sequence[str] | None,
    log_features: Sequence[str],
    fill_missing: str | None,
    source: str,
    sha256: str,
) -> Dataset:
    """A frame already read (from the file `where`) as a Dataset; see load_table."""
    check_column_choice(label, time, features, log_features, fill_missing)
    columns = list(frame.columns)
    asked = [label, time, *(features or ())]
    absent = [name for name in dict.fromkeys(asked) if name not in columns]
    if absent:
        raise TableError(
            f"table {where} has no column {', '.join(map(repr, absent))}; "
            f"its columns are: {', '.join(columns)}"
        )
    if features is None:
        features = _numeric_columns(frame, where, label, time, log_features)
    labels = _labels(frame[label], label)
    times = _times(frame[time], time)
    values = _features(frame, features, fill_missing)
    for index, name in enumerate(features):
        _warn_if_constant(values[:, index], name)
    return Dataset(
        features=values,
        labels=labels,
        times=times,
        feature_names=tuple(features),
        log_features=tuple(log_features),
        source=source,
        sha256=sha256,
    )


def _numeric_columns(
    frame: pd.DataFrame, where: str, label: str, time: str, log_features: Sequence[str]
) -> list[str]:
    numeric: list[str] = []
    left_out: list[str] = []
    for name in frame.columns:
        if name in (label, time):
            continue
        (numeric if _is_numeric(frame[name]) else left_out).append(name)
    if left_out:
        described = []
        for name in left_out:
            found = _first_non_number(frame[name])
            described.append(
                f"{name!r}"
                if found is None
                else f"{name!r} (data row {found[0]}: {_show(found[1])})"
            )
        print(f"{where}: left out non-numeric columns: {', '.join(described)}")
    if not numeric:
        raise TableError(
            f"table {where} has no numeric column besides the label {label!r} and the time "
            f"{time!r}; its columns are: {', '.join(frame.columns)}"
        )
    for name in log_features:
        if name not in numeric:
            why = (
                "a non-numeric column, left out"
                if name in left_out
                else "the label or the time"
                if name in (label, time)
                else "no column of the table"
            )
            raise TableError(f"log feature {name!r} is not among the features: it is {why}")
    return numeric


def _is_numeric(series: pd.Series) -> bool:
    dtype = series.dtype
    return pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
    )


def _blank(series: pd.Series) -> np.ndarray:
    """Missing cells of a text column: null, or nothing but spaces."""
    text = series.astype(object).map(lambda v: isinstance(v, str) and not v.strip())
    return np.asarray(series.isna().to_numpy() | text.to_numpy(dtype=bool))


def _first_non_number(series: pd.Series) -> tuple[int, object, int] | None:
    """(data row, value, how many such cells) of the first present cell that is no number."""
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(numbers) & ~_blank(series)
    if not bad.any():
        return None
    first = int(np.argmax(bad))
    return first + 1, series.iloc[first], int(bad.sum())


def _features(frame: pd.DataFrame, names: Sequence[str], fill_missing: str | None) -> np.ndarray:
    columns = []
    for name in names:
        series = frame[name]
        if not _is_numeric(series):
            bad = _first_non_number(series)
            if bad is not None:
                row, value, count = bad
                raise TableError(
                    f"feature column {name!r} is not numeric: data row {row} holds "
                    f"{_show(value)} ({count} such {_cells(count)}; {ROW_NOTE})"
                )
            series = pd.to_numeric(series, errors="coerce")
        columns.append(series.to_numpy(dtype=np.float64, na_value=np.nan))
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 becomes inf: missing
        values = np.column_stack(columns).astype(np.float32)
    nan, inf = np.isnan(values), np.isinf(values)
    missing = nan | inf
    holed = [index for index in range(len(names)) if missing[:, index].any()]
    if holed and fill_missing is None:
        first = holed[0]
        count = int(missing[:, first].sum())
        others = ", ".join(repr(names[i]) for i in holed[1:])
        raise TableError(
            f"feature column {names[first]!r} has {count} missing or infinite "
            f"{_cells(count)} ({int(nan[:, first].sum())} empty or NaN, "
            f"{int(inf[:, first].sum())} infinite or beyond float32), the first at data row "
            f"{int(np.argmax(missing[:, first])) + 1} ({ROW_NOTE})"
            + (f"; so have {others}" if others else "")
            + f"; {FILL_HINT}"
        )
    for index in holed:
        if missing[:, index].all():
            raise TableError(
                f"feature column {names[index]!r} has no value at all: "
                f"its {len(values)} cells are all missing"
            )
    values[inf] = np.nan  # one marker for a missing cell, filled after the split
    return values


def _labels(series: pd.Series, name: str) -> np.ndarray:
    if _is_numeric(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = series.astype(object).map(_label_value).to_numpy(dtype=np.float64)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        first = int(np.argmax(bad))
        count = int(bad.sum())
        raise TableError(
            f"label column {name!r} must be 0/1 or true/false: data row {first + 1} holds "
            f"{_show(series.iloc[first])} ({count} such {_cells(count)}; {ROW_NOTE})"
        )
    return np.asarray(values, dtype=np.int8)


def _label_value(cell: object) -> float:
    if isinstance(cell, bool | np.bool_):
        return float(cell)
    if isinstance(cell, str):
        return float(LABEL_WORDS.get(cell.strip().lower(), np.nan))
    if isinstance(cell, int | float | np.integer | np.floating) and cell in (0, 1):
        return float(cell)
    return np.nan


def _times(series: pd.Series, name: str) -> np.ndarray:
    """Epoch seconds: numbers as they are, ISO-8601 strings (naive = UTC) converted."""
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        stamps = series if isinstance(dtype, pd.DatetimeTZDtype) else series.dt.tz_localize("UTC")
        seconds = _seconds(stamps.dt.tz_convert("UTC"))
    elif _is_numeric(series) and not pd.api.types.is_bool_dtype(dtype):
        seconds = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif not pd.api.types.is_bool_dtype(dtype):
        numbers = pd.to_numeric(series, errors="coerce")
        if numbers.notna().all():  # epoch seconds written as text
            seconds = numbers.to_numpy(dtype=np.float64)
        else:
            stamps = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
            seconds = _seconds(stamps)
    else:
        seconds = np.full(len(series), np.nan)
    bad = ~np.isfinite(seconds)
    if bad.any():
        first = int(np.argmax(bad))
        count = int(bad.sum())
        raise TableError(
            f"time column {name!r} does not parse at data row {first + 1}: "
            f"{_show(series.iloc[first])} is neither epoch seconds nor an ISO-8601 time "
            f"such as 2024-05-01T12:30:00Z ({count} such {_cells(count)}; {ROW_NOTE})"
        )
    return seconds


def _seconds(stamps: pd.Series) -> np.ndarray:
    return np.asarray(
        ((stamps - EPOCH) / pd.Timedelta(seconds=1)).to_numpy(np.float64, na_value=np.nan)
    )


def _warn_if_constant(column: np.ndarray, name: str) -> None:
    present = column[np.isfinite(column)]
    if len(present) and present.min() == present.max():
        print(
            f"warning: feature {name!r} is constant ({present[0]:g} in every row that has "
            "a value); it is kept, but it cannot tell fraud from the rest",
            file=sys.stderr,
        )


def _show(value: object) -> str:
    try:
        empty = bool(pd.isna(value))
    except (TypeError, ValueError):
        empty = False
    if empty or (isinstance(value, str) and not value.strip()):
        return "an empty cell"
    text = str(value)
    if len(text) > SHOWN_CHARS:
        text = text[: SHOWN_CHARS - 3] + "..."
    return repr(text)


def _cells(count: int) -> str:
    return "cell" if count == 1 else "cells"
