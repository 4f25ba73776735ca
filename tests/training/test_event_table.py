"""Training on a raw event table: the shared features of its events, clear errors for bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.events import DEFINITIONS, FEATURES
from training import synthetic
from training.cli import main, parse_args
from training.event_table import load_events
from training.table import TableError


@pytest.fixture(scope="module")
def stream() -> pd.DataFrame:
    return synthetic.generate_events(rows=3000, seed=11)


def write(frame: pd.DataFrame, path: Path) -> Path:
    synthetic.write_events(frame, path)
    return path


@pytest.mark.parametrize("name", ["events.csv", "events.parquet"])
def test_an_event_table_makes_the_generators_data_set(
    stream: pd.DataFrame, tmp_path: Path, name: str
) -> None:
    data = load_events(write(stream, tmp_path / name), label="is_fraud")
    expected = synthetic.dataset_from_events(stream)
    np.testing.assert_array_equal(data.features, expected.features)
    np.testing.assert_array_equal(data.labels, expected.labels)
    np.testing.assert_array_equal(data.times, expected.times)
    assert data.feature_names == FEATURES and data.definitions == DEFINITIONS
    assert data.source == "events"


def test_rows_out_of_order_are_folded_in_time_order(stream: pd.DataFrame, tmp_path: Path) -> None:
    shuffled = stream.sample(frac=1.0, random_state=0)
    # No two events share a moment here, so time order is one order.
    assert stream["timestamp"].is_unique
    data = load_events(write(shuffled, tmp_path / "shuffled.csv"), label="is_fraud")
    expected = synthetic.dataset_from_events(stream)
    np.testing.assert_array_equal(data.features, expected.features)
    np.testing.assert_array_equal(data.labels, expected.labels)


def test_numeric_ids_iso_times_and_no_opening_dates(stream: pd.DataFrame, tmp_path: Path) -> None:
    frame = stream.drop(columns=["account_opened_at"]).head(200).copy()
    frame["account_id"] = frame["account_id"].str.removeprefix("acct-").astype(int)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True).map(
        lambda t: t.isoformat()
    )
    data = load_events(write(frame, tmp_path / "plain.csv"), label="is_fraud")
    assert len(data) == 200 and np.isfinite(data.features).all()


def bad(stream: pd.DataFrame, tmp_path: Path, **cells: object) -> Path:
    frame = stream.head(10).copy()
    for name, value in cells.items():
        frame[name] = frame[name].astype(object)
        frame.loc[frame.index[4], name] = value
    return write(frame, tmp_path / "bad.csv")


@pytest.mark.parametrize(
    ("cells", "words"),
    [
        ({"amount": -3.0}, ("'amount'", "data row 5", "greater than 0")),
        ({"type": "refund"}, ("'type'", "data row 5", "transfer, cash_out")),
        ({"lat": 123.0}, ("'lat'", "data row 5", "between -90 and 90")),
        ({"device_id": None}, ("'device_id'", "data row 5", "missing")),
        ({"timestamp": "yesterday"}, ("'timestamp'", "data row 5", "ISO-8601")),
    ],
)
def test_a_bad_event_names_its_column_and_row(
    stream: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cells: dict[str, object],
    words: tuple[str, ...],
) -> None:
    path = bad(stream, tmp_path, **cells)
    code = main(["--events", str(path), "--label", "is_fraud", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err
    assert not (tmp_path / "run").exists()


def test_missing_columns_and_flag_mixes(stream: pd.DataFrame, tmp_path: Path) -> None:
    path = write(stream.drop(columns=["payee_id"]), tmp_path / "nopayee.csv")
    with pytest.raises(TableError, match="no column 'payee_id'"):
        load_events(path, label="is_fraud")
    with pytest.raises(TableError, match="no column 'fraud'"):
        load_events(write(stream, tmp_path / "ok.csv"), label="fraud")
    with pytest.raises(ValueError, match="--label"):
        parse_args(["--events", "x.csv", "--out", "o"])
    with pytest.raises(ValueError, match="--time"):
        parse_args(["--events", "x.csv", "--label", "y", "--time", "t", "--out", "o"])
    with pytest.raises(ValueError, match="--table"):
        parse_args(["--events", "x.csv", "--label", "y", "--table", "t.csv", "--out", "o"])
    config = parse_args(["--events", "runs/my-events.csv", "--label", "y", "--out", "o"])
    assert (config.data, config.resolved_model_name) == ("events", "my-events")
    assert config.to_dict()["events_path"] == "runs/my-events.csv"


def test_training_on_events_records_the_definitions(tmp_path: Path) -> None:
    events = synthetic.generate_events(rows=6000, seed=42)
    path = write(events, tmp_path / "history.parquet")
    out = tmp_path / "run"
    flags = ["--epochs", "1", "--members", "1", "--patience", "1", "--verbose", "0"]
    assert main(["--events", str(path), "--label", "is_fraud", "--out", str(out), *flags]) == 0
    data = json.loads((out / "data.json").read_text())
    assert data["feature_definitions"] == DEFINITIONS
    assert data["events"] == {"path": str(path), "label": "is_fraud"}
    assert data["source"] == "events" and data["rows"] == len(events)
    config = json.loads((out / "config.json").read_text())
    assert (config["data"], config["model_name"]) == ("events", "history")
