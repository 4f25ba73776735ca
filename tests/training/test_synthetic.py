"""The synthetic mobile-money event stream, and the data set its features make."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.events import DEFINITIONS, EVENT_FIELDS, FEATURES, features_over_history
from features.reading import event_from_mapping, events_from_columns
from tests.conftest import ROOT
from training import synthetic

ROWS = 60_000


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return synthetic.generate_events(rows=ROWS, seed=3)


def test_columns_types_and_size(events: pd.DataFrame) -> None:
    assert tuple(events.columns) == (*EVENT_FIELDS, "is_fraud", "typology")
    assert 0.9 * ROWS < len(events) < 1.1 * ROWS
    assert events["event_id"].is_unique
    assert set(events["type"]) == {"transfer", "cash_out"}
    for name in ("timestamp", "amount", "balance_before", "lat", "lon", "account_opened_at"):
        assert events[name].dtype == np.float64, name
    assert (events["amount"] > 0).all() and (events["balance_before"] >= 0).all()
    # Whole cents.
    for name in ("amount", "balance_before"):
        cents = events[name].to_numpy() * 100
        np.testing.assert_allclose(cents, np.round(cents), atol=1e-6)
    assert set(events["is_fraud"]) == {0, 1}
    assert ((events["typology"] != "") == (events["is_fraud"] == 1)).all()


def test_fraud_share_and_every_typology(events: pd.DataFrame) -> None:
    assert 0.015 < events["is_fraud"].mean() < 0.025
    counts = events["typology"].value_counts()
    for name in synthetic.TYPOLOGIES:
        assert counts[name] > 100, name


def test_times_sorted_and_in_the_stream(events: pd.DataFrame) -> None:
    times = events["timestamp"].to_numpy()
    assert np.all(np.diff(times) >= 0)
    assert times.min() >= synthetic.START and times.max() < synthetic.END
    opened = events["account_opened_at"]
    # Some accounts leave their opening date out; the rest opened before they act.
    assert 0.05 < opened.isna().mean() < 0.3
    known = opened.notna()
    assert (opened[known] <= events.loc[known, "timestamp"]).mean() > 0.999


def test_every_event_is_valid_as_the_server_reads_it(events: pd.DataFrame) -> None:
    for row in events[list(EVENT_FIELDS)].to_dict("records"):
        if isinstance(row["account_opened_at"], float) and np.isnan(row["account_opened_at"]):
            row["account_opened_at"] = None
        event_from_mapping(row)


def test_accounts_have_histories(events: pd.DataFrame) -> None:
    per_account = events.groupby("account_id").size()
    assert per_account.median() >= 5
    # Customers keep to a few devices and pay regular payees again.
    legit = events[events["is_fraud"] == 0]
    assert legit.groupby("account_id")["device_id"].nunique().median() <= 2
    assert legit.duplicated(["account_id", "payee_id"]).mean() > 0.5


def test_deterministic_for_a_seed() -> None:
    first, again, other = (synthetic.generate_events(rows=5000, seed=s) for s in (7, 7, 8))
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    assert synthetic.generate(rows=5000, seed=7).sha256 == synthetic.generate(5000, 7).sha256


def test_dataset_is_the_shared_features_of_the_stream(events: pd.DataFrame) -> None:
    data = synthetic.dataset_from_events(events)
    columns = {name: events[name] for name in EVENT_FIELDS}
    expected = features_over_history(events_from_columns(columns)).astype(np.float32)
    np.testing.assert_array_equal(data.features, expected)
    np.testing.assert_array_equal(data.labels, events["is_fraud"].to_numpy())
    np.testing.assert_array_equal(data.times, events["timestamp"].to_numpy())
    assert data.feature_names == FEATURES and data.definitions == DEFINITIONS
    assert data.source == "synthetic" and data.features.dtype == np.float32
    digest = hashlib.sha256(
        data.features.tobytes() + data.labels.tobytes() + data.times.tobytes()
    ).hexdigest()
    assert data.sha256 == digest
    assert synthetic.generate(rows=ROWS, seed=3).sha256 == digest


def column(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, FEATURES.index(name)]


def test_typologies_leave_their_marks_but_overlap(events: pd.DataFrame) -> None:
    data = synthetic.dataset_from_events(events)
    typology = events["typology"].to_numpy()
    legit = typology == ""
    far = column(data.features, "distance_km") > 100
    burst = column(data.features, "txns_last_hour") >= 3
    drained = column(data.features, "balance_fraction") > 0.8
    tiny = column(data.features, "amount") < 5
    young = column(data.features, "account_age_days") < 30
    takeover, drain, testing = (typology == name for name in synthetic.TYPOLOGIES)
    # Each typology shows its signal far more often than customers do...
    assert far[takeover].mean() > 10 * far[legit].mean()
    assert drained[drain].mean() > 10 * drained[legit].mean()
    # (Accounts without an opening date are aged from their first event, so look young.)
    assert young[drain].mean() > 3 * young[legit].mean()
    assert (burst & tiny)[testing].mean() > 20 * (burst & tiny)[legit].mean()
    # ...yet customers show each signal too, so no single rule separates the classes.
    for signal in (far, drained, burst, tiny, young):
        assert signal[legit].sum() > 50
    new_device = column(data.features, "new_device") == 1
    assert new_device[legit].sum() > 500 and new_device[~legit].sum() > 100


def test_events_out_writes_a_table_the_features_can_read(tmp_path: Path) -> None:
    for name in ("events.csv", "events.parquet"):
        out = tmp_path / name
        command = ["-m", "training.synthetic", "--events-out", str(out), "--rows", "3000"]
        done = subprocess.run(
            [sys.executable, *command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert str(out) in done.stdout
        read = pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out)
        expected = synthetic.generate_events(rows=3000, seed=42)
        read["typology"] = read["typology"].fillna("")
        pd.testing.assert_frame_equal(read, expected, check_dtype=False)


def test_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rows"):
        synthetic.generate_events(rows=0)
