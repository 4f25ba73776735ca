"""The shipped mobile-money model: the generator remakes its event stream exactly, the shared
definitions make its features, and re-scoring the test period through onnxruntime reproduces
the model card and the comparison in the docs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from export.artifact import card_metrics
from features.events import DEFINITIONS, FEATURES
from server.scorer import OnnxScorer
from tests.calibration_checks import assert_calibrated
from tests.conftest import ROOT
from training.datasets import time_split
from training.synthetic import dataset_from_events, generate_events

MODEL_DIR = ROOT / "models" / "mobile-money" / "4"


@pytest.fixture(scope="module")
def scorer() -> OnnxScorer:
    return OnnxScorer.load(MODEL_DIR)


def test_the_model_card_says_what_was_trained(scorer: OnnxScorer) -> None:
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert (config["data"], config["synthetic_rows"], config["model_name"]) == (
        "synthetic",
        1_000_000,
        "mobile-money",
    )
    assert scorer.info.name == "mobile-money" and scorer.info.version == "4"
    assert scorer.info.feature_names == FEATURES
    # Its features came from raw events through the definitions the server runs.
    meta = {p.key: p.value for p in onnx.load(MODEL_DIR / "model.onnx").metadata_props}
    assert meta["feature_definitions"] == DEFINITIONS
    data = json.loads((MODEL_DIR / "data.json").read_text())
    assert data["feature_definitions"] == DEFINITIONS
    card = json.loads((MODEL_DIR / "metrics.json").read_text())
    # The model carries the card's figures but the reliability table.
    assert scorer.info.metrics == {p: card_metrics(card[p]) for p in ("validation", "test")}
    assert "reliability" in card["test"]["calibration"]
    assert "reliability" not in scorer.info.metrics["test"]["calibration"]


def test_rescoring_the_test_period_reproduces_the_figures(scorer: OnnxScorer) -> None:
    config = json.loads((MODEL_DIR / "config.json").read_text())
    events = generate_events(rows=config["synthetic_rows"], seed=config["seed"])
    data = dataset_from_events(events)
    assert json.loads((MODEL_DIR / "data.json").read_text())["sha256"] == data.sha256
    assert len(events) == json.loads((MODEL_DIR / "data.json").read_text())["rows"]
    test = time_split(data, config["test_fraction"], config["validation_fraction"]).test
    scores = np.concatenate(
        [scorer.predict(test.features[i : i + 8192]) for i in range(0, len(test), 8192)]
    )
    expected = scorer.info.metrics["test"]
    assert (len(test), int(test.labels.sum())) == (expected["rows"], expected["frauds"])
    assert roc_auc_score(test.labels, scores) == pytest.approx(expected["roc_auc"], abs=1e-4)
    assert average_precision_score(test.labels, scores) == pytest.approx(
        expected["average_precision"], abs=1e-3
    )
    # The served probabilities are calibrated: they add up to the frauds there were.
    assert_calibrated(MODEL_DIR, test.labels, scores)
    evaluation = json.loads((MODEL_DIR / "evaluation.json").read_text())
    assert evaluation["shipped"]["test"]["roc_auc"] == pytest.approx(expected["roc_auc"])
    # The docs page holds the comparison as make evaluate's compare wrote it.
    card = (MODEL_DIR / "evaluation.md").read_text()
    assert card.split("\n", 2)[2].strip() in (ROOT / "docs" / "models.md").read_text()
    assert {r["model"] for r in evaluation["runs"]} == {
        "LSTM-CNN",
        "XGBoost",
        "logistic regression",
    }
