"""The models the LSTM-CNN is measured against: gradient-boosted trees and logistic regression.

Training environment only; nothing here is exported or served. Both see the same fitted rows as
the LSTM-CNN, and their thresholds are chosen on validation in the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.datasets import Dataset
from training.preprocessing import Preprocessing

# The settings practitioners start from, as stated in issue #9.
XGBOOST_PARAMS = {
    "n_estimators": 400,
    "max_depth": 4,
    "learning_rate": 0.05,
    "subsample": 0.8,
    "tree_method": "hist",
}


@dataclass(frozen=True)
class Baseline:
    name: str
    # Raw feature rows (n, F) -> fraud probabilities (n,): the library's own predict.
    predict: Callable[[np.ndarray], np.ndarray]


def train_xgboost(fit: Dataset, seed: int) -> Baseline:
    import xgboost

    # One thread, as the served LSTM-CNN gets, so that single-row latencies compare.
    model = xgboost.XGBClassifier(**XGBOOST_PARAMS, random_state=seed, n_jobs=1)
    model.fit(fit.features, fit.labels)
    # Trees need no scaling: they see the raw features.
    return Baseline("XGBoost", lambda rows: model.predict_proba(rows)[:, 1])


def train_logistic_regression(fit: Dataset, seed: int) -> Baseline:
    from sklearn.linear_model import LogisticRegression

    # The LSTM-CNN's own transform (log of Amount, scaler fitted on these rows), so the
    # comparison is of models, not of preprocessing.
    prep = Preprocessing.fit(fit.features, fit.feature_names, fit.log_features)
    model = LogisticRegression(max_iter=2000, random_state=seed)
    model.fit(prep.transform(fit.features), fit.labels)
    return Baseline(
        "logistic regression", lambda rows: model.predict_proba(prep.transform(rows))[:, 1]
    )


TRAINERS: dict[str, Callable[[Dataset, int], Baseline]] = {
    "XGBoost": train_xgboost,
    "logistic regression": train_logistic_regression,
}
