"""The table loader: CSV and Parquet, every bad-table message, filling missing cells, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT
from training.config import TrainConfig
from training.datasets import MIN_FRAUDS_PER_PART, DataError, time_split
from training.preprocessing import Preprocessing
from training.table import TableError, load_table

ROWS = 10


def base() -> dict[str, list[Any]]:
    """Ten rows: epoch-second times, two numeric features, a 0/1 label."""
    return {
        "t": [float(i) for i in range(ROWS)],
        "a": [0.5, 1.5, -2.0, 3.25, 4.0, 0.0, 7.5, 1.0, 2.0, 9.0],
        "b": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
        "y": [0, 1, 0, 0, 1, 0, 0, 1, 0, 0],
    }


def cell(value: Any) -> str:
    return "" if value is None else str(value)


def write(path: Path, columns: dict[str, list[Any]]) -> Path:
    """CSV cells are written as str() of each value (None = empty); Parquet keeps the types."""
    if path.suffix == ".csv":
        lines = [",".join(columns)]
        lines += [",".join(cell(v[i]) for v in columns.values()) for i in range(ROWS)]
        path.write_text("\n".join(lines) + "\n")
    else:
        pd.DataFrame(columns).to_parquet(path, index=False)
    return path


def edit(**changes: Callable[[list[Any]], list[Any]]) -> dict[str, list[Any]]:
    columns = base()
    for name, change in changes.items():
        columns[name] = change(list(columns.get(name, [])))
    return columns


def at(index: int, value: Any) -> Callable[[list[Any]], list[Any]]:
    def change(values: list[Any]) -> list[Any]:
        values[index] = value
        return values

    return change


def replace(values: list[Any]) -> Callable[[list[Any]], list[Any]]:
    return lambda _: list(values)


ISO = [f"2024-03-01T00:00:{i:02d}Z" for i in range(ROWS)]
WORDS = ["false", "TRUE", "False", "false", "True", "false", "false", "true", "FALSE", "false"]

# (id, file suffix, columns, load_table keyword arguments, fragments the message must hold)
BAD_TABLES: list[tuple[str, str, dict[str, list[Any]], dict[str, Any], tuple[str, ...]]] = [
    (
        "missing label column",
        ".csv",
        base(),
        {"label": "fraud"},
        ("no column 'fraud'", "its columns are: t, a, b, y"),
    ),
    (
        "missing feature column",
        ".parquet",
        base(),
        {"features": ["a", "zz"]},
        ("no column 'zz'", "t, a, b, y"),
    ),
    (
        "non-numeric feature",
        ".csv",
        edit(a=at(2, "abc")),
        {"features": ["a", "b"]},
        (
            "feature column 'a' is not numeric",
            "data row 3 holds 'abc'",
            "1 such cell",
            "data row 1 is the first after the header",
        ),
    ),
    (
        "non-numeric feature in parquet",
        ".parquet",
        edit(a=replace(["1", "2", "3", "4", "x1", "6", "7", "x2", "9", "10"])),
        {"features": ["a"]},
        ("'a' is not numeric", "row 5", "'x1'", "2 such cells"),
    ),
    (
        "empty cells",
        ".csv",
        edit(a=at(1, None), b=at(6, None)),
        {},
        ("'a' has 1 missing", "data row 2", "so have 'b'", "--fill-missing median"),
    ),
    (
        "NaN and inf in parquet",
        ".parquet",
        edit(b=lambda v: [*v[:3], np.inf, v[4], np.nan, *v[6:]]),
        {},
        ("'b' has 2 missing or infinite cells", "1 empty or NaN, 1 infinite", "row 4"),
    ),
    (
        "-inf written in a CSV",
        ".csv",
        edit(a=at(7, "-inf")),
        {},
        ("'a' has 1 missing or infinite cell", "0 empty or NaN, 1 infinite", "row 8"),
    ),
    (
        "beyond float32",
        ".csv",
        edit(b=at(0, "1e39")),
        {},
        ("'b'", "beyond float32", "row 1"),
    ),
    (
        "label not binary",
        ".csv",
        edit(y=at(3, 2)),
        {},
        ("label column 'y' must be 0/1 or true/false", "row 4", "'2'"),
    ),
    (
        "label word",
        ".parquet",
        edit(y=replace([*WORDS[:6], "maybe", *WORDS[7:]])),
        {},
        ("label column 'y'", "row 7", "'maybe'"),
    ),
    (
        "label empty",
        ".csv",
        edit(y=at(0, None)),
        {},
        ("label column 'y'", "row 1", "an empty cell"),
    ),
    (
        "time does not parse",
        ".csv",
        edit(t=replace([*ISO[:2], "yesterday", *ISO[3:]])),
        {},
        ("time column 't' does not parse at data row 3", "'yesterday'", "ISO-8601"),
    ),
    (
        "time empty",
        ".parquet",
        edit(t=at(5, np.nan)),
        {},
        ("time column 't' does not parse at data row 6", "an empty cell"),
    ),
    (
        "feature listed twice",
        ".csv",
        base(),
        {"features": ["a", "b", "a"]},
        ("feature 'a' is listed twice",),
    ),
    (
        "label as a feature",
        ".csv",
        base(),
        {"features": ["a", "y"]},
        ("label column 'y' cannot also be a feature",),
    ),
    (
        "time as a feature",
        ".csv",
        base(),
        {"features": ["t", "a"]},
        ("time column 't' cannot also be a feature",),
    ),
    (
        "log feature not among the features",
        ".csv",
        base(),
        {"features": ["a"], "log_features": ["b"]},
        ("log feature 'b' is not among the features (a)",),
    ),
    (
        "log feature that is not numeric",
        ".csv",
        edit(s=replace(["x"] * ROWS)),
        {"log_features": ["s"]},
        ("log feature 's'", "non-numeric column"),
    ),
    (
        "log feature that is no column",
        ".parquet",
        base(),
        {"log_features": ["amount"]},
        ("log feature 'amount'", "no column"),
    ),
    (
        "unknown fill strategy",
        ".csv",
        base(),
        {"fill_missing": "mean"},
        ("unknown fill-missing strategy 'mean'", "median"),
    ),
    (
        "label and time the same",
        ".csv",
        base(),
        {"label": "t"},
        ("label and the time cannot both be column 't'",),
    ),
    (
        "no numeric feature",
        ".csv",
        {"t": base()["t"], "y": base()["y"], "s": ["x"] * ROWS},
        {},
        ("no numeric column besides the label 'y' and the time 't'",),
    ),
    (
        "a feature with no value at all",
        ".parquet",
        edit(b=replace([np.nan] * ROWS)),
        {"fill_missing": "median"},
        ("'b' has no value at all", "10 cells"),
    ),
]


@pytest.mark.parametrize(
    ("suffix", "columns", "kwargs", "fragments"),
    [case[1:] for case in BAD_TABLES],
    ids=[case[0] for case in BAD_TABLES],
)
def test_bad_tables_are_named_by_column_and_row(
    tmp_path: Path,
    suffix: str,
    columns: dict[str, list[Any]],
    kwargs: dict[str, Any],
    fragments: tuple[str, ...],
) -> None:
    path = write(tmp_path / f"tx{suffix}", columns)
    with pytest.raises(TableError) as caught:
        load_table(path, **{"label": "y", "time": "t", **kwargs})
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("tx.xlsx", b"a,b\n1,2\n", ("unknown extension '.xlsx'", ".csv, .parquet")),
        ("tx.parquet", b"this is no parquet file", ("cannot read", "as Parquet")),
        ("tx.csv", b"", ("is empty",)),
        ("tx.csv", b"t,a,y\n", ("no data rows",)),
        ("tx.csv", b"t,a,y\n1,\xff\xfe,0\n", ("cannot read", "as CSV")),
    ],
    ids=["unknown extension", "not parquet", "empty file", "header only", "not utf-8"],
)
def test_unreadable_files(
    tmp_path: Path, name: str, content: bytes, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TableError) as caught:
        load_table(path, label="y", time="t")
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_missing_file_and_empty_parquet(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="no such file"):
        load_table(tmp_path / "absent.csv", label="y", time="t")
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"t": [], "a": [], "y": []}).to_parquet(empty)
    with pytest.raises(TableError, match="no data rows"):
        load_table(empty, label="y", time="t")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_numeric_columns_in_file_order_are_the_features(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    columns = {"merchant": ["shop"] * ROWS, **base()}
    order = ("b", "t", "merchant", "a", "y")
    path = write(tmp_path / f"tx{suffix}", {k: columns[k] for k in order})
    data = load_table(path, label="y", time="t", log_features=["b"])
    assert data.feature_names == ("b", "a") and data.log_features == ("b",)
    assert data.features.dtype == np.float32 and data.features.shape == (ROWS, 2)
    np.testing.assert_array_equal(data.features[:, 1], np.float32(base()["a"]))
    np.testing.assert_array_equal(data.labels, base()["y"])
    assert data.labels.dtype == np.int8 and data.source == "table" and len(data.sha256) == 64
    note = "left out non-numeric columns: 'merchant' (data row 1: 'shop')"
    assert note in capsys.readouterr().out


def test_labels_as_booleans_and_words(tmp_path: Path) -> None:
    flags = [w.lower() == "true" for w in WORDS]
    words = load_table(write(tmp_path / "w.csv", edit(y=replace(WORDS))), label="y", time="t")
    booleans = load_table(write(tmp_path / "b.parquet", edit(y=replace(flags))), "y", "t")
    np.testing.assert_array_equal(words.labels, np.int8(flags))
    np.testing.assert_array_equal(booleans.labels, np.int8(flags))


def test_iso_times_with_and_without_zone(tmp_path: Path) -> None:
    naive = [f"2024-03-01T10:00:{i:02d}" for i in range(ROWS)]
    zoned = [f"2024-03-01T12:00:{i:02d}+02:00" for i in range(ROWS)]
    epoch = pd.Timestamp("2024-03-01T10:00:00Z").timestamp()
    expected = epoch + np.arange(ROWS, dtype=np.float64)
    for name, times in (("naive", naive), ("zoned", zoned)):
        for suffix in (".csv", ".parquet"):
            path = write(tmp_path / f"{name}{suffix}", edit(t=replace(times)))
            np.testing.assert_array_equal(load_table(path, "y", "t").times, expected)
    stamps = pd.to_datetime(naive)  # a Parquet timestamp column, naive = UTC
    path = write(tmp_path / "stamps.parquet", edit(t=replace(list(stamps))))
    np.testing.assert_array_equal(load_table(path, "y", "t").times, expected)


def test_constant_feature_is_kept_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "tx.csv", edit(b=replace([5.0] * ROWS)))
    data = load_table(path, label="y", time="t")
    assert data.feature_names == ("a", "b")
    err = capsys.readouterr().err
    assert "warning: feature 'b' is constant (5 in every row" in err and "kept" in err


def test_fill_keeps_missing_cells_as_nan(tmp_path: Path) -> None:
    path = write(tmp_path / "tx.csv", edit(a=at(1, None), b=at(6, "inf")))
    data = load_table(path, label="y", time="t", fill_missing="median")
    assert np.isnan(data.features[1, 0]) and np.isnan(data.features[6, 1])
    assert np.isfinite(data.features).sum() == 2 * ROWS - 2


def split_table(tmp_path: Path, frauds: list[int], rows: int = 60) -> Path:
    """Rows at seconds 0..rows-1, fraud at the given rows; `a` rises with time and has a hole
    in the test period."""
    labels = np.zeros(rows, dtype=int)
    labels[frauds] = 1
    frame = pd.DataFrame(
        {
            "t": np.arange(rows, dtype=float),
            "a": np.arange(rows, dtype=float),
            "y": labels,
        }
    )
    frame.loc[rows - 3, "a"] = np.nan
    path = tmp_path / "split.parquet"
    frame.to_parquet(path)
    return path


def test_too_few_frauds_names_each_part(tmp_path: Path) -> None:
    # 60 rows: fit 0-37, validation 38-47, test 48-59.
    data = load_table(split_table(tmp_path, [5, 10, 50]), "y", "t", fill_missing="median")
    with pytest.raises(DataError) as caught:
        time_split(data, test_fraction=0.2, validation_fraction=0.2)
    message = str(caught.value)
    assert "too few frauds for a time split: fit 2, validation 0, test 1" in message
    assert f"at least {MIN_FRAUDS_PER_PART}" in message and MIN_FRAUDS_PER_PART == 3


def test_median_comes_from_the_fit_rows_and_is_filled_like_the_graph(tmp_path: Path) -> None:
    frauds = [1, 5, 9, 40, 42, 45, 50, 52, 55]
    data = load_table(split_table(tmp_path, frauds), "y", "t", fill_missing="median")
    split = time_split(data, 0.2, 0.2)
    prep = Preprocessing.fit(split.fit.features, data.feature_names, (), "median")
    assert prep.fill_values == (18.5,)  # the median of 0..37; later rows play no part
    assert prep.missing_values() == {"strategy": "median", "fill": [18.5]}
    holes = np.array([[np.nan], [np.inf], [-np.inf], [18.5]], dtype=np.float32)
    scaled = prep.transform(holes)
    assert np.all(scaled == scaled[-1])
    np.testing.assert_allclose(scaled[-1], (18.5 - prep.mean[0]) / prep.std[0], rtol=1e-6)
    assert prep.raw_mean == (18.5,)  # of the values present


def test_fill_round_trips_and_old_preprocessing_loads(tmp_path: Path) -> None:
    features = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 6.0]], dtype=np.float32)
    prep = Preprocessing.fit(features, ("a", "b"), ("b",), "median")
    prep.save(tmp_path / "prep.json")
    assert Preprocessing.load(tmp_path / "prep.json") == prep
    saved = json.loads((tmp_path / "prep.json").read_text())
    assert saved["fill_missing"] == "median" and saved["fill_values"] == [2.0, 5.0]
    old = {k: v for k, v in saved.items() if not k.startswith("fill")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = Preprocessing.load(tmp_path / "old.json")
    assert loaded.fill_missing is None and loaded.missing_values() is None


def test_a_feature_without_a_fit_value_has_no_median() -> None:
    features = np.array([[1.0, np.nan], [2.0, np.nan]], dtype=np.float32)
    with pytest.raises(DataError, match="feature 'b' has no value in the 2 fit rows"):
        Preprocessing.fit(features, ("a", "b"), (), "median")


def test_the_shipped_config_still_loads() -> None:
    card = json.loads((ROOT / "models" / "creditcard" / "4" / "config.json").read_text())
    config = TrainConfig(**card)
    assert config.to_dict() == card  # a preset's config.json has no table fields


def test_a_table_config_round_trips_through_json(tmp_path: Path) -> None:
    config = TrainConfig(
        out_dir=str(tmp_path),
        data="table",
        table_path="data/payments.parquet",
        label_column="is_fraud",
        time_column="created",
        features=("amount", "age"),
        log_features=("amount",),
        fill_missing="median",
    )
    assert config.resolved_model_name == "payments"
    config.save(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["features"] == ["amount", "age"] and saved["fill_missing"] == "median"
    assert TrainConfig(**saved).to_dict() == saved == config.to_dict()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": "table"}, "needs table_path"),
        ({"data": "table", "table_path": "x.csv", "label_column": "y"}, "label and time"),
        ({"label_column": "y"}, "label_column apply to a table run only"),
        (
            {"data": "table", "table_path": "x.csv", "label_column": "y", "time_column": "t"}
            | {"features": ("a", "a")},
            "listed twice",
        ),
        ({"data": "table", "table_path": ".x.csv", "label_column": "y", "time_column": "t"}, ""),
    ],
    ids=["no path", "no time", "table field on a preset", "doubled feature", "dot name"],
)
def test_config_refuses_what_does_not_hold_together(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message or "folder name"):
        TrainConfig(out_dir=str(tmp_path), **kwargs)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("table", "args", "fragments"),
    [
        ("missing", ["--label", "fraud"], ("no column 'fraud'", "t, a, b, y")),
        ("non-numeric", ["--features", "a,b"], ("'a' is not numeric", "row 3", "'abc'")),
        ("holes", [], ("'a' has 1 missing", "--fill-missing median")),
        ("split", ["--fill-missing", "median"], ("fit 2, validation 0, test 1", "at least 3")),
        ("missing", ["--features", "a,,b"], ("empty feature name",)),
        ("missing", ["--fill-missing", "mode"], ("unknown fill-missing strategy 'mode'",)),
        ("missing", ["--data", "creditcard"], ("--table and --data cannot be combined",)),
        (None, ["--label", "y"], ("--label needs --table",)),
    ],
    ids=[
        "missing column",
        "non-numeric",
        "missing values",
        "too few frauds",
        "empty name",
        "fill strategy",
        "table and preset",
        "label without table",
    ],
)
def test_cli_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, table: str | None, args: list[str], fragments: tuple[str, ...]
) -> None:
    tables = {
        "missing": lambda: write(tmp_path / "tx.csv", base()),
        "non-numeric": lambda: write(tmp_path / "tx.csv", edit(a=at(2, "abc"))),
        "holes": lambda: write(tmp_path / "tx.parquet", edit(a=at(4, np.nan))),
        "split": lambda: split_table(tmp_path, [5, 10, 50]),
    }
    table_args = [] if table is None else ["--table", str(tables[table]())]
    label = [] if table is None or "--label" in args else ["--label", "y"]
    time = [] if table is None else ["--time", "t"]
    out = tmp_path / "run"
    done = run_cli(*table_args, *label, *time, *args, "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr
    assert not out.exists()  # a refused table leaves nothing behind
