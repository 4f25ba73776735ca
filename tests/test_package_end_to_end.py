"""Foreign classifiers -> python -m export.package -> a real uvicorn -> predict_proba's numbers.

scikit-learn's LogisticRegression (skl2onnx, with and without ZipMap) and XGBoost
(onnxmltools) are packaged by the command line and served each by the serving-only
environment; what the server answers must be what the toolkit itself predicts.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from tests.conftest import ROOT, TEST_API_KEY, start_server, stop_server
from tests.export.test_package import (
    FEATURES,
    features_of,
    fit_logistic,
    fit_xgboost,
    make_table,
    onnxmltools_model,
    skl2onnx_model,
)

TOLERANCE = 1e-5
SINGLE_ROWS = 60
BATCH_ROWS = 200


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on the first month, package on the second: as a user with a holdout would."""
    frame = make_table(rows=6000, seed=1)
    return frame.iloc[:3000], frame.iloc[3000:]


def converted(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> dict[str, tuple[onnx.ModelProto, Callable[[np.ndarray], np.ndarray]]]:
    train = frames[0]
    logistic, xgb = fit_logistic(train), fit_xgboost(train)
    return {
        "lr_zipmap": (skl2onnx_model(logistic), logistic.predict_proba),  # type: ignore[attr-defined]
        "lr_tensor": (skl2onnx_model(logistic, zipmap=False), logistic.predict_proba),  # type: ignore[attr-defined]
        "xgb": (onnxmltools_model(xgb), xgb.predict_proba),  # type: ignore[attr-defined]
    }


def test_packaged_models_serve_predict_proba(
    frames: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    validation = tmp_path / "validation.parquet"
    frames[1].to_parquet(validation, index=False)
    rows = features_of(frames[1])
    worst: dict[str, float] = {}
    for name, (proto, predict_proba) in converted(frames).items():
        source = tmp_path / f"{name}.onnx"
        onnx.save(proto, source)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "export.package",
                "--onnx",
                str(source),
                "--validation",
                str(validation),
                "--label",
                "is_fraud",
                "--time",
                "event_time",
                "--features",
                ",".join(FEATURES),
                "--name",
                name,
                "--out",
                str(tmp_path / "models"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        model_dir = tmp_path / "models" / name / "1"
        expected = predict_proba(rows)[:, 1]
        server = start_server(model_dir, tmp_path / f"{name}.log")
        try:
            with server.client(headers={"X-API-Key": TEST_API_KEY}) as client:
                described = client.get("/v1/model").json()
                assert described["name"] == name and described["features"] == list(FEATURES)
                single = [
                    client.post("/v1/score", json={"features": [float(v) for v in rows[i]]}).json()[
                        "fraud_probability"
                    ]
                    for i in range(SINGLE_ROWS)
                ]
                items = [
                    {"transaction_id": str(i), "features": [float(v) for v in rows[i]]}
                    for i in range(BATCH_ROWS)
                ]
                answer = client.post("/v1/score/batch", json={"transactions": items})
                assert answer.status_code == 200, answer.text
                batch = [r["fraud_probability"] for r in answer.json()["results"]]
        finally:
            stop_server(server)
        single_diff = np.abs(np.array(single) - expected[:SINGLE_ROWS])
        batch_diff = np.abs(np.array(batch) - expected[:BATCH_ROWS])
        worst[name] = float(max(single_diff.max(), batch_diff.max()))
        assert worst[name] <= TOLERANCE, (name, worst[name])
        # Real probabilities, not a constant: the served scores spread out.
        assert np.std(batch) > 0.01
    print("max |served - predict_proba|:", worst)
