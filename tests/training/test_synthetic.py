from __future__ import annotations

import numpy as np

from training import synthetic
from training.datasets import Dataset


def test_shape_rate_and_schema() -> None:
    data = synthetic.generate(rows=100_000, seed=3)
    assert data.features.shape == (100_000, 10)
    assert data.feature_names == synthetic.FEATURES
    assert 0.015 < data.labels.mean() < 0.025
    assert np.isfinite(data.features).all()
    assert np.all(np.diff(data.times) >= 0)


def test_every_feature_is_documented() -> None:
    doc = synthetic.__doc__ or ""
    for name in synthetic.FEATURES:
        assert f"\n  {name} " in doc, name


def test_deterministic_for_a_seed() -> None:
    first, again, other = (synthetic.generate(rows=5000, seed=s) for s in (7, 7, 8))
    assert first.sha256 == again.sha256
    np.testing.assert_array_equal(first.features, again.features)
    assert first.sha256 != other.sha256


def column(data: Dataset, name: str) -> np.ndarray:
    return data.features[:, synthetic.FEATURES.index(name)]


def test_typologies_leave_their_marks_but_overlap() -> None:
    data = synthetic.generate(rows=100_000, seed=1)
    fraud, legit = data.labels == 1, data.labels == 0
    # Account takeover: new devices are far more common among fraud...
    assert column(data, "new_device")[fraud].mean() > 5 * column(data, "new_device")[legit].mean()
    # ...card testing: bursts of transfers in the last hour...
    burst = column(data, "txns_last_hour") >= 5
    assert burst[fraud].mean() > 10 * burst[legit].mean()
    # ...cash-out drain: balances emptied.
    drained = column(data, "balance_fraction") > 0.8
    assert drained[fraud].mean() > 5 * drained[legit].mean()
    # Yet legitimate rows show each signal too, so no single rule separates the classes.
    assert column(data, "new_device")[legit].sum() > 1000
    assert burst[legit].sum() > 100
    assert drained[legit].sum() > 500
