"""The credit-card loader and the honest split, on a small file with the real schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.creditcard import COLUMNS, FEATURES, DataFormatError, load_creditcard
from training.datasets import time_split
from training.preprocessing import Preprocessing


def write_fixture(path: Path, rows: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0, 172_800, rows)).round()
    pca = rng.normal(size=(rows, 28))
    amount = rng.lognormal(3, 1.5, rows).round(2)
    labels = (rng.random(rows) < 0.05).astype(int)
    labels[[10, 250, 300, 390]] = 1  # fraud in every part of the split
    lines = [",".join(f'"{c}"' for c in COLUMNS)]
    for i in range(rows):
        values = [
            f"{times[i]:.0f}",
            *(f"{v:.6f}" for v in pca[i]),
            f"{amount[i]:.2f}",
            f'"{labels[i]}"',
        ]
        lines.append(",".join(values))
    path.write_text("\n".join(lines) + "\n")
    return labels


def test_loads_the_schema(tmp_path: Path) -> None:
    csv = tmp_path / "creditcard.csv"
    labels = write_fixture(csv)
    data = load_creditcard(csv)
    assert data.feature_names == FEATURES
    assert len(FEATURES) == 29 and "Time" not in FEATURES and "Class" not in FEATURES
    assert data.features.shape == (400, 29)
    assert data.features.dtype == np.float32
    np.testing.assert_array_equal(data.labels, labels)
    assert data.log_features == ("Amount",)
    assert len(data.sha256) == 64


def test_rejects_a_different_schema(tmp_path: Path) -> None:
    csv = tmp_path / "other.csv"
    csv.write_text("Time,V1,Class\n0,1.0,0\n")
    with pytest.raises(DataFormatError, match="expected columns"):
        load_creditcard(csv)


def test_rejects_bad_labels(tmp_path: Path) -> None:
    csv = tmp_path / "creditcard.csv"
    write_fixture(csv)
    text = csv.read_text().splitlines()
    text[5] = text[5].rsplit(",", 1)[0] + ',"2"'
    csv.write_text("\n".join(text) + "\n")
    with pytest.raises(DataFormatError, match="Class"):
        load_creditcard(csv)


def test_split_is_time_ordered_and_scaler_sees_fit_rows_only(tmp_path: Path) -> None:
    csv = tmp_path / "creditcard.csv"
    write_fixture(csv)
    data = load_creditcard(csv)
    shuffled = data.take(np.random.default_rng(1).permutation(len(data)))
    split = time_split(shuffled, test_fraction=0.2, validation_fraction=0.2)
    assert len(split.fit) + len(split.validation) + len(split.test) == 400
    assert 250 <= len(split.fit) <= 256 and 75 <= len(split.test) <= 80
    assert split.fit.times.max() < split.validation.times.min()
    assert split.validation.times.max() < split.test.times.min()

    prep = Preprocessing.fit(split.fit.features, data.feature_names, data.log_features)
    amount = split.fit.features[:, -1].astype(np.float64)
    assert prep.mean[-1] == pytest.approx(np.log1p(amount).mean())
    assert prep.raw_mean[0] == pytest.approx(split.fit.features[:, 0].mean(), rel=1e-5)
    everything = Preprocessing.fit(data.features, data.feature_names, data.log_features)
    assert prep.mean != everything.mean
    scaled = prep.transform(split.fit.features)
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-4)


def test_split_needs_fraud_in_every_part(tmp_path: Path) -> None:
    csv = tmp_path / "creditcard.csv"
    write_fixture(csv)
    data = load_creditcard(csv)
    no_fraud = data.take(slice(0, 200))
    no_fraud = type(data)(
        no_fraud.features,
        np.zeros(200, np.int8),
        no_fraud.times,
        data.feature_names,
        data.log_features,
        data.source,
        data.sha256,
    )
    with pytest.raises(ValueError, match="too few frauds for a time split: fit 0, validation 0"):
        time_split(no_fraud, 0.2, 0.2)


def test_rows_sharing_a_timestamp_stay_on_one_side(tmp_path: Path) -> None:
    csv = tmp_path / "creditcard.csv"
    write_fixture(csv)
    data = load_creditcard(csv)
    # Ten rows at one moment, right where the test cut falls (row 320 of 400).
    times = data.times.copy()
    times[315:325] = times[315]
    tied = type(data)(
        data.features,
        data.labels,
        times,
        data.feature_names,
        data.log_features,
        data.source,
        data.sha256,
    )
    split = time_split(tied, test_fraction=0.2, validation_fraction=0.2)
    assert split.validation.times.max() < split.test.times.min()
    assert len(split.test) == 85  # the whole moment went to the later part
