"""Several models in one server, with fake scorers: the default and the named routes, the
listing, 404s naming the served models, v2 on every model, and per-model metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from server.app import create_app
from server.errors import SettingsError
from server.settings import Settings
from tests.conftest import ROOT
from tests.server.fakes import FakeScorer, fake_info

KEY = "models-test-key-0123"
HEADERS = {"X-API-Key": KEY}


def wallet_scorer() -> FakeScorer:
    """A second model with other features: the probability is its first feature, too."""
    scorer = FakeScorer()
    scorer.info = fake_info(
        name="wallet",
        version="3",
        feature_names=("amount", "new_device"),
        feature_mean=(0.0, 0.0),
        feature_std=(1.0, 1.0),
        review_threshold=0.3,
        decline_threshold=0.6,
    )
    return scorer


def make_client(**settings: Any) -> TestClient:
    app = create_app(Settings(api_keys=(KEY,), **settings), scorers=[FakeScorer(), wallet_scorer()])
    return TestClient(app, raise_server_exceptions=False)


def test_the_default_model_answers_the_unnamed_routes() -> None:
    with make_client() as client:
        answer = client.post("/v1/score", json={"features": [0.95, 0, 0]}, headers=HEADERS)
        assert answer.status_code == 200 and answer.json()["model_version"] == "7"
        assert client.get("/v1/model", headers=HEADERS).json()["name"] == "fake"
    with make_client(default_model="wallet") as client:
        answer = client.post("/v1/score", json={"features": [0.5, 1]}, headers=HEADERS)
        assert answer.status_code == 200
        assert (answer.json()["model_version"], answer.json()["decision"]) == ("3", "REVIEW")
        assert client.get("/v1/model", headers=HEADERS).json()["name"] == "wallet"


def test_named_routes_reach_each_model_with_its_own_features_and_thresholds() -> None:
    with make_client() as client:
        fake = client.post("/v1/models/fake/score", json={"features": [0.5, 0, 0]}, headers=HEADERS)
        wallet = client.post(
            "/v1/models/wallet/score",
            json={"transaction_id": "w-1", "features": {"amount": 0.5, "new_device": 1}},
            headers=HEADERS,
        )
        assert fake.json()["decision"] == "REVIEW" and fake.json()["model_version"] == "7"
        assert wallet.json() == {
            "transaction_id": "w-1",
            "fraud_probability": 0.5,
            "decision": "REVIEW",
            "model_version": "3",
            "out_of_distribution": False,
            "unusual_features": [],
            "reasons": [{"feature": "amount", "value": 0.5, "contribution": 0.5}],
        }
        # Three features are right for one model and wrong for the other.
        wrong = client.post(
            "/v1/models/wallet/score", json={"features": [0.5, 0, 0]}, headers=HEADERS
        )
        assert wrong.status_code == 422
        batch = client.post(
            "/v1/models/wallet/score/batch",
            json={"transactions": [{"features": [0.1, 0]}, {"features": [0.9, 1]}]},
            headers=HEADERS,
        )
        assert [r["decision"] for r in batch.json()["results"]] == ["APPROVE", "DECLINE"]
        pinned = client.post(
            "/v1/models/wallet/score?version=3", json={"features": [0.1, 0]}, headers=HEADERS
        )
        assert pinned.status_code == 200
        missing = client.post(
            "/v1/models/wallet/score?version=7", json={"features": [0.1, 0]}, headers=HEADERS
        )
        assert missing.status_code == 404 and "no version '7'" in missing.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/models/nope/score"),
        ("POST", "/v1/models/nope/score/batch"),
        ("GET", "/v1/models/nope"),
        ("GET", "/v1/models/nope/samples"),
    ],
)
def test_an_unknown_model_is_a_404_naming_the_served_ones(method: str, path: str) -> None:
    with make_client() as client:
        answer = client.request(method, path, json={"features": [0.1, 0]}, headers=HEADERS)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "not_found"
    assert "'nope'" in error["message"] and "fake, wallet" in error["message"]


def test_named_routes_check_the_key_and_the_method_like_the_others() -> None:
    with make_client() as client:
        assert client.post("/v1/models/wallet/score", json={}).status_code == 401
        assert client.post("/v1/models/nope/score", json={}).status_code == 401
        wrong = client.get("/v1/models/wallet/score", headers=HEADERS)
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        # Not a model route: an empty name, or a name with a slash in it.
        for path in ("/v1/models//score", "/v1/models/a/b/score"):
            assert client.post(path, json={}, headers=HEADERS).status_code == 404


def test_the_listing_and_the_descriptions_cover_every_model() -> None:
    with make_client(default_model="wallet") as client:
        listing = client.get("/v1/models", headers=HEADERS).json()
        described = client.get("/v1/models/fake", headers=HEADERS).json()
        pinned = client.get("/v1/models/wallet?version=3", headers=HEADERS).json()
    assert listing["default_model"] == "wallet"
    assert [(m["name"], m["default_version"]) for m in listing["models"]] == [
        ("wallet", "3"),
        ("fake", "7"),
    ]
    assert listing["models"][0]["versions"][0]["features"] == ["amount", "new_device"]
    assert (described["name"], described["features"]) == ("fake", ["amount", "hour", "distance"])
    assert pinned["thresholds"] == {"review": 0.3, "decline": 0.6}


def test_v2_serves_every_model() -> None:
    with make_client() as client:
        for name, width in (("fake", 3), ("wallet", 2)):
            meta = client.get(f"/v2/models/{name}").json()
            assert meta["inputs"][0]["shape"] == [-1, width]
            assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
            body = {
                "inputs": [
                    {"name": "features", "datatype": "FP32", "shape": [1, width], "data": [0.25]}
                ]
            }
            body["inputs"][0]["data"] = [0.25] + [0.0] * (width - 1)
            answer = client.post(f"/v2/models/{name}/infer", json=body, headers=HEADERS)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_name"] == name
            assert answer.json()["outputs"][0]["data"] == [0.25]
        unknown = client.get("/v2/models/nope")
        assert unknown.status_code == 404 and "fake, wallet" in unknown.json()["error"]


def test_metrics_carry_the_model() -> None:
    with make_client() as client:
        client.post("/v1/score", json={"features": [0.95, 0, 0]}, headers=HEADERS)
        client.post("/v1/models/wallet/score", json={"features": [0.95, 0]}, headers=HEADERS)
        client.post("/v1/models/wallet/score", json={"features": [0.1, 0]}, headers=HEADERS)
        client.post("/v1/models/wallet/score", json={"features": [9.0, 0]}, headers=HEADERS)
        client.post("/v1/models/nope/score", json={"features": [0.1]}, headers=HEADERS)
        tensor = {"name": "features", "datatype": "FP32", "shape": [1, 2], "data": [0.1, 0]}
        client.post("/v2/models/wallet/infer", json={"inputs": [tensor]}, headers=HEADERS)
        client.get("/v2/models/nope")
        text = client.get("/metrics").text
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def get(name: str, **labels: str) -> float:
        if name == "fraud_requests_total":
            labels.setdefault("protocol", "http")  # every request here is an HTTP one
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    route = "/v1/models/{name}/score"
    assert get("fraud_requests_total", route="/v1/score", model="fake", status="200") == 1
    assert get("fraud_requests_total", route=route, model="wallet", status="200") == 3
    # An unknown name is counted without it: clients cannot grow the label set.
    assert get("fraud_requests_total", route=route, model="", status="404") == 1
    v2 = "/v2/models/{name}/infer"
    assert get("fraud_requests_total", route=v2, model="wallet", status="200") == 1
    assert get("fraud_requests_total", route="/v2/models/{name}", model="", status="404") == 1
    assert get("fraud_decisions_total", model="fake", decision="DECLINE") == 1
    assert get("fraud_decisions_total", model="wallet", decision="DECLINE") == 2
    assert get("fraud_decisions_total", model="wallet", decision="APPROVE") == 1
    assert get("fraud_out_of_distribution_total", model="wallet") == 1
    assert get("fraud_out_of_distribution_total", model="fake") == 0
    assert get("fraud_probability_count", model="wallet") == 4  # three on v1, one on v2
    assert ("fraud_queue_depth", (("model", "wallet"),)) in found


def test_the_document_describes_the_named_routes_for_any_model() -> None:
    with make_client() as client:
        document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    features = schemas["ModelDescription"]["properties"]["features"]
    assert features["minItems"] == 1 and "maxItems" not in features  # the models differ
    named = document["paths"]["/v1/models/{name}/score"]["post"]
    assert named["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NamedScoreRequest"
    }
    assert "404" in named["responses"]


def test_a_model_that_fills_missing_inputs_takes_null_and_absent_features() -> None:
    filling = FakeScorer()
    filling.info = fake_info(name="filling", fills_missing=True)
    app = create_app(Settings(api_keys=(KEY,)), scorers=[FakeScorer(), filling])
    with TestClient(app, raise_server_exceptions=False) as client:
        null = client.post(
            "/v1/models/filling/score", json={"features": [0.2, None, 1]}, headers=HEADERS
        )
        absent = client.post(
            "/v1/models/filling/score/batch",
            json={"transactions": [{"features": {"amount": 0.2, "distance": 1}}]},
            headers=HEADERS,
        )
        # The fake model sees NaN where the feature is missing; a real graph fills it.
        assert null.status_code == 200 and absent.status_code == 200
        assert null.json()["unusual_features"] == []
        rows = np.concatenate(filling.calls)
        assert np.isnan(rows[:, 1]).all() and not np.isnan(rows[:, [0, 2]]).any()
        # A model that does not fill them still refuses both, naming the feature.
        refused = client.post("/v1/score", json={"features": [0.2, None, 1]}, headers=HEADERS)
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "features[1]"
        gone = client.post(
            "/v1/score", json={"features": {"amount": 0.2, "distance": 1}}, headers=HEADERS
        )
        assert gone.status_code == 422 and "missing feature(s): hour" in gone.text
        # Still not a number: a string is refused by the filling model too.
        text = client.post(
            "/v1/models/filling/score", json={"features": [0.2, "x", 1]}, headers=HEADERS
        )
        assert text.status_code == 422 and text.json()["error"]["field"] == "features[1]"
        document = client.get("/openapi.json").json()["components"]["schemas"]
    named = document["NamedScoreRequest"]["properties"]["features"]["oneOf"][0]["items"]
    assert {"type": "null"} in named["oneOf"]  # one served model fills missing inputs
    default = document["ScoreRequest"]["properties"]["features"]["oneOf"][0]["items"]
    assert "oneOf" not in default  # the default model does not


def test_a_default_model_that_is_not_served_stops_start_up() -> None:
    app = create_app(
        Settings(api_keys=(KEY,), default_model="nope"), scorers=[FakeScorer(), wallet_scorer()]
    )
    with (
        pytest.raises(SettingsError, match="'nope' is not among the served models"),
        TestClient(app),
    ):
        pass


def test_one_model_with_nothing_servable_stops_start_up_and_closes_the_others(
    tmp_path: Path,
) -> None:
    shutil.copytree(ROOT / "models" / "creditcard" / "4", tmp_path / "creditcard" / "4")
    broken = tmp_path / "zeta" / "1"  # loaded after creditcard: names are sorted
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{}")
    settings = Settings(
        api_keys=(KEY,), model_repository=tmp_path, default_model="creditcard", poll_interval_s=0
    )
    app = create_app(settings)
    with pytest.raises(SettingsError, match="no servable version of model 'zeta'"), TestClient(app):
        pass
    # creditcard had loaded and started its runner: shut down again, nothing left published.
    assert app.state.serving.snapshots == {}


def test_v2_marks_missing_values_with_null_or_nan_for_a_model_that_fills_them() -> None:
    filling = FakeScorer()
    filling.info = fake_info(name="filling", fills_missing=True)
    app = create_app(Settings(api_keys=(KEY,)), scorers=[FakeScorer(), filling])
    tensor = {"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [0.2, None, 1]}
    raw = np.asarray([[0.3, np.nan, 1.0]], dtype="<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [1, 3],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    binary = {"Inference-Header-Content-Length": str(len(header)), **HEADERS}
    with TestClient(app, raise_server_exceptions=False) as client:
        for name, status in (("filling", 200), ("fake", 400)):
            path = f"/v2/models/{name}/infer"
            as_json = client.post(path, json={"inputs": [tensor]}, headers=HEADERS)
            as_bytes = client.post(path, content=header + raw, headers=binary)
            assert (as_json.status_code, as_bytes.status_code) == (status, status), name
        inf = np.asarray([[0.3, np.inf, 1.0]], dtype="<f4").tobytes()
        refused = client.post("/v2/models/filling/infer", content=header + inf, headers=binary)
        assert refused.status_code == 400 and "infinite" in refused.json()["error"]
    rows = np.concatenate(filling.calls)
    assert np.isnan(rows[:, 1]).all() and len(rows) == 2
