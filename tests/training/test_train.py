"""A real (tiny) training run: outputs, sorted metrics, thresholds from validation only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training import calibration, synthetic
from training.datasets import time_split
from training.evaluation import choose_thresholds
from training.preprocessing import Preprocessing


def test_run_writes_every_output(tiny_run: Path) -> None:
    for name in (
        "config.json",
        "data.json",
        "preprocessing.json",
        "model.keras",
        "metrics.json",
        "curves.png",
        "test_rows.npz",
    ):
        assert (tiny_run / name).stat().st_size > 0, name
    text = (tiny_run / "metrics.json").read_text()
    metrics = json.loads(text)
    assert text == json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    for part in ("validation", "test"):
        assert set(metrics[part]["at_thresholds"]) == {"review", "decline"}
        assert {"precision", "recall", "f1", "tp", "fp", "tn", "fn"} <= set(
            metrics[part]["at_thresholds"]["decline"]
        )
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["synthetic_rows"] == 6000 and config["model_name"] == "tiny"
    assert config["calibration"] == "auto"


def test_run_calibrates_on_validation_and_records_both_methods(tiny_run: Path) -> None:
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    record = metrics["calibration"]
    assert record["method"] in calibration.METHODS and record["fitted_on"] == "validation"
    measured = record["cross_validated"]
    assert set(measured) == set(calibration.METHODS)
    # "auto" kept the one with the lower held-out log loss (of those keeping the ranking).
    assert {"brier", "log_loss", "average_precision"} <= set(measured["platt"])
    if measured["isotonic"]["average_precision"] >= measured["platt"]["average_precision"]:
        assert record["method"] == min(measured, key=lambda m: measured[m]["log_loss"])
    for part in ("validation", "test"):
        figures = metrics[part]["calibration"]
        before = record["uncalibrated"][part]
        assert figures["observed_frauds"] == metrics[part]["frauds"] == before["observed_frauds"]
        assert 0.0 <= figures["ece"] <= 1.0 and 0.0 <= figures["brier"] <= 1.0
        assert sum(b["rows"] for b in figures["reliability"]) == metrics[part]["rows"]
    # Fitted on validation, the calibrated validation probabilities add up to its frauds far
    # closer than the class-weighted network's do.
    val = metrics["validation"]["calibration"]
    raw = record["uncalibrated"]["validation"]
    assert abs(val["predicted_frauds"] - val["observed_frauds"]) < abs(
        raw["predicted_frauds"] - raw["observed_frauds"]
    )
    assert val["brier"] <= raw["brier"]


def test_thresholds_come_from_validation_not_test(tiny_run: Path) -> None:
    import keras

    config = json.loads((tiny_run / "config.json").read_text())
    data = synthetic.generate(rows=config["synthetic_rows"], seed=config["seed"])
    split = time_split(data, config["test_fraction"], config["validation_fraction"])
    prep = Preprocessing.load(tiny_run / "preprocessing.json")
    model = keras.saving.load_model(tiny_run / "model.keras")
    metrics = json.loads((tiny_run / "metrics.json").read_text())

    def scores(rows: np.ndarray) -> np.ndarray:
        raw = model.predict(prep.transform(rows), batch_size=4096, verbose=0).ravel()
        return calibration.apply(metrics["calibration"], raw).astype(np.float32)

    on_validation = choose_thresholds(
        split.validation.labels, scores(split.validation.features), config["review_recall"]
    )
    on_test = choose_thresholds(
        split.test.labels, scores(split.test.features), config["review_recall"]
    )
    assert metrics["thresholds"] == on_validation
    assert metrics["thresholds"] != on_test
    # The saved test rows are the latest rows, raw.
    saved = np.load(tiny_run / "test_rows.npz")
    np.testing.assert_array_equal(saved["features"], split.test.features)
    # The scaler saw the fitted rows only.
    assert (
        prep.raw_mean
        == Preprocessing.fit(split.fit.features, data.feature_names, data.log_features).raw_mean
    )


def test_same_seed_same_model(tiny_run: Path, tmp_path: Path) -> None:
    from training.config import TrainConfig
    from training.train import run

    config = json.loads((tiny_run / "config.json").read_text())
    again = run(TrainConfig(**{**config, "out_dir": str(tmp_path)}))
    assert again == json.loads((tiny_run / "metrics.json").read_text())
