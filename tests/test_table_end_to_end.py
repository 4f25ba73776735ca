"""A table of our own making -> python -m training --table -> python -m export -> uvicorn.

The table has ISO-8601 times (zoned and naive), a log feature, a text column the loader leaves
out, and missing cells filled with the fit rows' median inside the graph.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from export.verify import HOLED_ROWS, VerificationError, allowed, check_parity
from tests.conftest import ROOT, TEST_API_KEY, LiveServer, start_server, stop_server

pytestmark = pytest.mark.training

ROWS = 4000
FEATURES = ["amount", "hours_since_login", "noise"]
TINY = ["--epochs", "2", "--members", "1", "--batch-size", "256", "--patience", "1"]


def make_table(path: Path, seed: int = 7) -> Path:
    """Two informative features (a large amount, a fresh login) and one of noise."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.uniform(0, 20 * 86_400, ROWS))
    stamps = pd.Timestamp("2024-05-01", tz="UTC") + pd.to_timedelta(seconds, unit="s")
    # Odd rows in Berlin time with their offset, even rows naive (read as UTC): one timeline.
    iso = [
        s.tz_convert("Europe/Berlin").isoformat() if i % 2 else s.strftime("%Y-%m-%dT%H:%M:%S")
        for i, s in enumerate(stamps)
    ]
    fraud = rng.random(ROWS) < 0.06
    amount = np.where(fraud, rng.lognormal(6.0, 1.0, ROWS), rng.lognormal(3.5, 1.0, ROWS))
    hours = np.where(fraud, rng.exponential(0.5, ROWS), rng.exponential(24.0, ROWS))
    frame = pd.DataFrame(
        {
            "created_at": iso,
            "merchant": rng.choice(["grocer", "airline", "cafe"], ROWS),
            "amount": amount.round(2),
            "hours_since_login": hours.round(3),
            "noise": rng.normal(size=ROWS).round(4),
            "is_fraud": np.where(fraud, "true", "false"),
        }
    )
    frame.loc[rng.random(ROWS) < 0.03, "amount"] = np.nan
    frame.loc[rng.random(ROWS) < 0.02, "hours_since_login"] = np.nan
    frame.to_csv(path, index=False)
    return path


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the table, the training run, the exported model folder)."""
    root = tmp_path_factory.mktemp("table")
    table = make_table(root / "payments.csv")
    run = root / "run"
    trained = run_module(
        "-m",
        "training",
        "--table",
        str(table),
        "--label",
        "is_fraud",
        "--time",
        "created_at",
        "--log-features",
        "amount",
        "--fill-missing",
        "median",
        *TINY,
        "--verbose",
        "0",
        "--out",
        str(run),
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "left out non-numeric columns: 'merchant'" in trained.stdout
    exported = run_module("-m", "export", "--run", str(run), "--out", str(root / "models"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    model_dir = root / "models" / "payments" / "1"  # the default name is the file's stem
    assert (model_dir / "model.onnx").exists(), exported.stdout
    # Parity was checked on the test rows and on copies of them with holes punched in.
    tested = len(np.load(run / "test_rows.npz")["labels"]) + HOLED_ROWS
    assert f"over {tested} test rows" in exported.stdout, exported.stdout
    return table, run, model_dir


@pytest.fixture(scope="module")
def table_server(
    table_run: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    server = start_server(table_run[2], tmp_path_factory.mktemp("server") / "uvicorn.log")
    yield server
    stop_server(server)


def test_run_records_the_table(table_run: tuple[Path, Path, Path]) -> None:
    table, run, _ = table_run
    data = json.loads((run / "data.json").read_text())
    assert data["source"] == "table"
    assert data["sha256"] == hashlib.sha256(table.read_bytes()).hexdigest()
    assert data["table"]["features"] == FEATURES and data["table"]["log_features"] == ["amount"]
    assert (data["table"]["label"], data["table"]["time"]) == ("is_fraud", "created_at")
    assert set(data["table"]["missing_cells"]) == {"amount", "hours_since_login"}
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == "table" and config["fill_missing"] == "median"
    assert config["table_path"] == str(table) and config["model_name"] == "payments"


def test_served_probability_equals_onnxruntime(
    table_server: LiveServer, table_run: tuple[Path, Path, Path]
) -> None:
    _, run, model_dir = table_run
    rows = np.load(run / "test_rows.npz")["features"]
    rows = rows[np.isfinite(rows).all(axis=1)][:40]  # complete rows; missing ones below
    session = ort.InferenceSession(str(model_dir / "model.onnx"))
    direct = session.run(None, {"features": rows})[0].ravel()
    with table_server.client(headers={"X-API-Key": TEST_API_KEY}) as client:
        assert client.get("/v1/model").json()["features"] == FEATURES
        for i, row in enumerate(rows):
            named = dict(zip(FEATURES, (float(v) for v in row), strict=True))
            answer = client.post("/v1/score", json={"features": named})
            assert answer.status_code == 200, answer.text
            assert abs(answer.json()["fraud_probability"] - float(direct[i])) <= 1e-6


def test_missing_features_are_served_as_the_graph_fills_them(
    table_server: LiveServer, table_run: tuple[Path, Path, Path]
) -> None:
    """The model fills missing inputs, so the server takes null (or, by name, an absent
    feature) for them: the answer equals onnxruntime's on the row with NaN there."""
    _, run, model_dir = table_run
    rows = np.load(run / "test_rows.npz")["features"][:20].copy()
    rows[:, 0] = np.nan  # amount, the first feature, missing in every row
    session = ort.InferenceSession(str(model_dir / "model.onnx"))
    direct = session.run(None, {"features": rows})[0].ravel()
    with table_server.client(headers={"X-API-Key": TEST_API_KEY}) as client:
        for i, row in enumerate(rows):
            values = [None if np.isnan(v) else float(v) for v in row]
            as_null = client.post("/v1/score", json={"features": values})
            named = {n: v for n, v in zip(FEATURES, values, strict=True) if v is not None}
            absent = client.post("/v1/score", json={"features": named})
            for answer in (as_null, absent):
                assert answer.status_code == 200, answer.text
                assert abs(answer.json()["fraud_probability"] - float(direct[i])) <= 1e-6
                assert answer.json()["unusual_features"] == []  # missing is not unusual
        # Still refused: a string, and NaN spelled out.
        bad = client.post("/v1/score", json={"features": ["x", *values[1:]]})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "features[0]"


def test_onnx_fills_missing_inputs_as_numpy_does(table_run: tuple[Path, Path, Path]) -> None:
    """onnxruntime on rows with NaN (and inf) = Keras on the rows numpy filled beforehand."""
    import keras

    from training.preprocessing import Preprocessing

    _, run, model_dir = table_run
    proto = onnx.load(model_dir / "model.onnx")
    meta = {p.key: p.value for p in proto.metadata_props}
    prep = Preprocessing.load(run / "preprocessing.json")
    missing = json.loads(meta["missing_values"])
    assert missing == {"strategy": "median", "fill": list(prep.fill_values)}
    assert len(missing["fill"]) == len(FEATURES)

    rows = np.load(run / "test_rows.npz")["features"][:300].copy()
    assert np.isnan(rows).any()  # the test period held missing cells of its own
    rows[0] = np.nan
    rows[1, 2] = np.inf
    rows[2, 1] = -np.inf
    fill = np.asarray(missing["fill"], dtype=np.float32)
    filled = np.where(np.isfinite(rows), rows, fill)
    assert np.isfinite(filled).all()
    model = keras.saving.load_model(run / "model.keras")
    # The graph ends in the run's calibration map: Keras's raw score goes through it.
    calibration = json.loads((run / "metrics.json").read_text())["calibration"]
    low, high = allowed(model.predict(prep.transform(filled), verbose=0).ravel(), calibration)
    session = ort.InferenceSession(proto.SerializeToString())
    for batch in (1, 7, 64):
        got = np.concatenate(
            [
                session.run(None, {"features": rows[i : i + batch]})[0].ravel()
                for i in range(0, len(rows), batch)
            ]
        )
        assert np.isfinite(got).all()
        assert np.all((got >= low) & (got <= high))
    # The numpy transform fills the same way by itself.
    np.testing.assert_array_equal(prep.transform(rows), prep.transform(filled))
    # And a filled cell is not a zero: the fill value matters.
    zeroed = session.run(None, {"features": np.where(np.isfinite(rows), rows, np.float32(0.0))})
    assert not np.all((zeroed[0].ravel() >= low) & (zeroed[0].ravel() <= high))


def test_parity_refuses_missing_inputs_a_model_does_not_fill(
    tiny_model_dir: Path, tiny_run: Path
) -> None:
    import keras

    from training.preprocessing import Preprocessing

    prep = Preprocessing.load(tiny_run / "preprocessing.json")
    assert prep.missing_values() is None
    proto = onnx.load(tiny_model_dir / "model.onnx")
    assert "missing_values" not in {p.key for p in proto.metadata_props}
    rows = np.load(tiny_run / "test_rows.npz")["features"][:20].copy()
    model = keras.saving.load_model(tiny_run / "model.keras")
    calibration = json.loads((tiny_run / "metrics.json").read_text())["calibration"]
    check_parity(proto, model, prep, rows, calibration)  # complete rows pass
    rows[3, 0] = np.nan
    with pytest.raises(VerificationError, match="fills none"):
        check_parity(proto, model, prep, rows, calibration)
