"""Reason codes: occlusion by the training mean, on the service's answers, and true of the
shipped models (the top reason matters more than any feature outside the top three)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from server.alerts import _Alert, encode_alert
from server.app import create_app
from server.reasons import Explainer
from server.scorer import OnnxScorer
from server.settings import Settings
from tests.conftest import ROOT
from tests.server.fakes import FakeScorer

KEY = "reasons-test-key-0123"
HEADERS = {"X-API-Key": KEY}


def test_each_row_goes_again_then_each_copy_has_one_feature_at_its_mean() -> None:
    explainer = Explainer(("a", "b", "c"), (10.0, 20.0, 30.0), top=3)
    rows = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    copies = explainer.occluded(rows).reshape(2, 4, 3)
    for r in range(2):
        assert copies[r, 0].tolist() == rows[r].tolist()
        for i in range(3):
            expected = rows[r].copy()
            expected[i] = (10.0, 20.0, 30.0)[i]
            assert copies[r, i + 1].tolist() == expected.tolist()


def test_reasons_are_the_largest_positive_contributions_first() -> None:
    explainer = Explainer(("a", "b", "c", "d"), (0, 0, 0, 0), top=2)
    rows = np.array([[1.5, np.nan, 3.0, 4.0]], np.float32)
    # p = 0.9; without a: 0.5, without b: 0.8, without c: 0.95 (c lowers it), without d: 0.3.
    (reasons,) = explainer.reasons(rows, np.array([0.9, 0.5, 0.8, 0.95, 0.3]))
    assert [r["feature"] for r in reasons] == ["d", "a"]
    assert reasons[0] == {"feature": "d", "value": 4.0, "contribution": pytest.approx(0.6)}
    (missing,) = Explainer(("a", "b", "c", "d"), (0, 0, 0, 0), top=4).reasons(
        rows, np.array([0.9, 0.95, 0.8, 0.95, 0.95])
    )
    # Only b raised the probability, and its value was missing: null, not NaN.
    assert missing == [{"feature": "b", "value": None, "contribution": pytest.approx(0.1)}]


def make_client(**settings: object) -> TestClient:
    config = Settings(api_keys=(KEY,), **settings)  # type: ignore[arg-type]
    return TestClient(create_app(config, scorer=FakeScorer()), raise_server_exceptions=False)


def test_every_answer_but_approve_says_why_and_approve_when_asked() -> None:
    # The fake model's probability is its first feature: that feature is the whole reason.
    with make_client() as client:
        decline = client.post("/v1/score", json={"features": [0.95, 3, 4]}, headers=HEADERS)
        review = client.post("/v1/score", json={"features": [0.6, 3, 4]}, headers=HEADERS)
        approve = client.post("/v1/score", json={"features": [0.1, 3, 4]}, headers=HEADERS)
        asked = client.post(
            "/v1/score", json={"features": [0.1, 3, 4], "explain": True}, headers=HEADERS
        )
        bad = client.post(
            "/v1/score", json={"features": [0.1, 3, 4], "explain": "yes"}, headers=HEADERS
        )
    assert decline.json()["reasons"] == [
        {"feature": "amount", "value": pytest.approx(0.95), "contribution": pytest.approx(0.95)}
    ]
    assert review.json()["decision"] == "REVIEW"
    assert review.json()["reasons"][0]["feature"] == "amount"
    assert approve.json()["decision"] == "APPROVE" and "reasons" not in approve.json()
    assert asked.json()["reasons"][0]["contribution"] == pytest.approx(0.1)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "explain"


def test_a_batch_explains_only_the_rows_that_need_it_in_one_model_run() -> None:
    scorer = FakeScorer()
    config = Settings(api_keys=(KEY,))
    with TestClient(create_app(config, scorer=scorer)) as client:
        calls_before = len(scorer.calls)
        items = [
            {"transaction_id": "a", "features": [0.1, 0, 0]},
            {"transaction_id": "b", "features": [0.97, 0, 0]},
            {"transaction_id": "c", "features": [0.2, 0, 0], "explain": True},
            {"transaction_id": "d", "features": [0.3, 0, 0]},
        ]
        answer = client.post("/v1/score/batch", json={"transactions": items}, headers=HEADERS)
    results = answer.json()["results"]
    assert ["reasons" in r for r in results] == [False, True, True, False]
    # One run to score, one to explain b and c: 2 rows, each again and with 3 features occluded.
    runs = scorer.calls[calls_before:]
    assert [len(run) for run in runs] == [4, 8]


def test_reasons_off_with_zero() -> None:
    with make_client(reasons=0) as client:
        decline = client.post("/v1/score", json={"features": [0.95, 3, 4]}, headers=HEADERS)
    assert decline.json()["decision"] == "DECLINE" and "reasons" not in decline.json()


def test_alerts_carry_the_reasons_without_the_values() -> None:
    alert = _Alert("t-1", 0.97, "DECLINE", "3", 1.7e9, "creditcard", (("V14", 0.4), ("V4", 0.1)))
    body = orjson.loads(encode_alert(alert, slack=False))
    assert body["reasons"] == [
        {"feature": "V14", "contribution": 0.4},
        {"feature": "V4", "contribution": 0.1},
    ]
    text = orjson.loads(encode_alert(alert, slack=True))["text"]
    assert text.endswith("reasons: V14 (+0.400), V4 (+0.100)")


def shipped_fraud_rows(model: str) -> tuple[OnnxScorer, np.ndarray]:
    folder = max((ROOT / "models" / model).iterdir(), key=lambda p: int(p.name))
    samples = json.loads((folder / "samples.json").read_text())
    rows = [s["features"] for s in samples["rows"] if s["fraud"]]
    return OnnxScorer.load(Path(folder)), np.asarray(rows, np.float32)


@pytest.mark.parametrize("model", ["creditcard", "mobile-money"])
def test_the_top_reason_matters_more_than_any_feature_outside_the_top_three(model: str) -> None:
    """For each shipped fraud sample that is not APPROVEd: the top reason's feature put to
    its training mean lowers the probability more than any feature outside the top three."""
    scorer, rows = shipped_fraud_rows(model)
    info = scorer.info
    explainer = Explainer(info.feature_names, info.feature_mean, top=3)
    probabilities = scorer.predict(rows)
    flagged = probabilities >= info.review_threshold
    assert flagged.sum() >= 3, "the samples hold frauds the model flags"
    rows, probabilities = rows[flagged], probabilities[flagged]
    explained = explainer.reasons(rows, scorer.predict(explainer.occluded(rows)))
    for row, p, reasons in zip(rows, probabilities, explained, strict=True):
        assert reasons, "a flagged fraud has at least one reason"
        top = info.feature_names.index(reasons[0]["feature"])
        named = {r["feature"] for r in reasons}
        ordinary = np.repeat(row[None, :], len(row), axis=0)
        ordinary[np.arange(len(row)), np.arange(len(row))] = info.feature_mean
        drop = p - scorer.predict(ordinary)
        outside = [drop[i] for i, name in enumerate(info.feature_names) if name not in named]
        assert drop[top] > max(outside)
        assert drop[top] == pytest.approx(reasons[0]["contribution"], abs=1e-5)
