"""The app with a fake scorer: auth, health, decisions, errors, driven by TestClient."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.errors import SettingsError
from server.settings import Settings
from tests.server.fakes import FakeScorer

KEY = "unit-test-key-abcdef"
OTHER_KEY = "second-key-123456"


def make_client(scorer: FakeScorer | None = None, **settings: object) -> TestClient:
    config = Settings(api_keys=(KEY, OTHER_KEY), **settings)  # type: ignore[arg-type]
    return TestClient(
        create_app(config, scorer=scorer or FakeScorer()), raise_server_exceptions=False
    )


def score(client: TestClient, body: object, key: str | None = KEY):
    headers = {"X-API-Key": key} if key is not None else {}
    return client.post("/v1/score", json=body, headers=headers)


def test_scores_and_decides_by_the_model_thresholds() -> None:
    with make_client() as client:
        decisions = {
            p: score(client, {"transaction_id": f"t{p}", "features": [p, 0, 0]}).json()
            for p in (0.1, 0.5, 0.7, 0.95, 1.0)
        }
    assert {p: d["decision"] for p, d in decisions.items()} == {
        0.1: "APPROVE",
        0.5: "REVIEW",
        0.7: "REVIEW",
        0.95: "DECLINE",
        1.0: "DECLINE",
    }
    assert decisions[0.7] == {
        "transaction_id": "t0.7",
        "fraud_probability": pytest.approx(0.7),
        "decision": "REVIEW",
        "model_version": "7",
        "out_of_distribution": False,
        "unusual_features": [],
        # The fake model's probability is its first feature: the whole reason.
        "reasons": [
            {"feature": "amount", "value": pytest.approx(0.7), "contribution": pytest.approx(0.7)}
        ],
    }


def test_settings_override_thresholds() -> None:
    with make_client(review_threshold=0.05, decline_threshold=0.2) as client:
        assert score(client, {"features": [0.1, 0, 0]}).json()["decision"] == "REVIEW"
        assert score(client, {"features": [0.3, 0, 0]}).json()["decision"] == "DECLINE"
        assert client.get("/v1/model", headers={"X-API-Key": KEY}).json()["thresholds"] == {
            "review": 0.05,
            "decline": 0.2,
        }


def test_thresholds_out_of_order_refuse_to_start() -> None:
    with pytest.raises(SettingsError), make_client(review_threshold=0.8, decline_threshold=0.3):
        pass


def test_plain_features_form_and_named_form_agree() -> None:
    scorer = FakeScorer()
    with make_client(scorer) as client:
        plain = score(client, {"features": [0.6, 2, 3]}).json()
        by_name = score(client, {"features": {"distance": 3, "hour": 2, "amount": 0.6}}).json()
    assert plain == by_name
    assert plain["transaction_id"] is None
    # Each REVIEW is scored, then explained in a second run: compare the scoring runs.
    assert scorer.calls[0].tolist() == scorer.calls[2].tolist()
    assert scorer.calls[0].dtype.name == "float32"


def test_colon_inside_a_string_is_not_mistaken_for_a_duplicate() -> None:
    with make_client() as client:
        response = score(client, {"transaction_id": "tx:2026:01", "features": [0.2, 1, 2]})
    assert response.status_code == 200
    assert response.json()["transaction_id"] == "tx:2026:01"


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        (None, 401, "missing_api_key"),
        ("", 401, "missing_api_key"),
        ("wrong-key", 403, "invalid_api_key"),
        (KEY[:-1], 403, "invalid_api_key"),
        (KEY + "x", 403, "invalid_api_key"),
        ("ключ", 403, "invalid_api_key"),
    ],
)
def test_scoring_needs_a_valid_key(key: str | None, status: int, code: str) -> None:
    scorer = FakeScorer()
    with make_client(scorer) as client:
        headers = {"X-API-Key": key.encode()} if key is not None else {}
        response = client.post("/v1/score", json={"features": [0, 0, 0]}, headers=headers)
        model = client.get("/v1/model", headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert model.status_code == status
    assert scorer.calls == []  # rejected before the model is touched


def test_any_configured_key_works() -> None:
    with make_client() as client:
        assert score(client, {"features": [0, 0, 0]}, key=OTHER_KEY).status_code == 200


def test_auth_comes_before_validation() -> None:
    with make_client() as client:
        response = client.post(
            "/v1/score", content=b"not json", headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 401


def test_no_key_configured_refuses_to_start() -> None:
    with pytest.raises(SettingsError, match="no API key"):
        create_app(Settings(), scorer=FakeScorer())


def test_insecure_setting_serves_without_keys() -> None:
    app = create_app(Settings(insecure_disable_auth=True), scorer=FakeScorer())
    with TestClient(app) as client:
        assert score(client, {"features": [0.1, 0, 0]}, key=None).status_code == 200


def test_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# analysts\nfile-key-one\n\nfile-key-two  # batch jobs\n")
    app = create_app(Settings(api_key_file=key_file), scorer=FakeScorer())
    with TestClient(app) as client:
        assert score(client, {"features": [0, 0, 0]}, key="file-key-two").status_code == 200
        assert score(client, {"features": [0, 0, 0]}, key="# analysts").status_code == 403


def test_key_file_with_byte_order_mark(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_bytes("\ufeffbom-key-1\n".encode())
    app = create_app(Settings(api_key_file=key_file), scorer=FakeScorer())
    with TestClient(app) as client:
        assert score(client, {"features": [0, 0, 0]}, key="bom-key-1").status_code == 200


@pytest.mark.parametrize("key", ["ключ-1234", "tab\tkey"])
def test_non_ascii_or_unprintable_keys_refuse_to_start(key: str) -> None:
    with pytest.raises(SettingsError, match="ASCII"):
        create_app(Settings(api_keys=(key,)), scorer=FakeScorer())


def test_unreadable_key_file_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="FRAUD_API_KEY_FILE"):
        create_app(Settings(api_key_file=tmp_path / "absent"), scorer=FakeScorer())


def test_readiness_follows_the_lifespan() -> None:
    client = make_client()
    # Outside the context manager the lifespan has not run: live, not ready.
    assert client.get("/v1/health/live").status_code == 200
    not_ready = client.get("/v1/health/ready")
    assert not_ready.status_code == 503
    assert not_ready.json()["error"]["code"] == "not_ready"
    assert score(client, {"features": [0, 0, 0]}).status_code == 503
    with client:
        ready = client.get("/v1/health/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "model": "fake", "model_version": "7"}
    assert client.get("/v1/health/ready").status_code == 503


def test_health_needs_no_key() -> None:
    with make_client() as client:
        assert client.get("/v1/health/live").json() == {"status": "live"}
        assert client.get("/v1/health/ready").status_code == 200


def test_model_failure_is_a_500_that_says_so_without_a_traceback() -> None:
    with make_client(FakeScorer(fail=True)) as client:
        response = score(client, {"features": [0.5, 0, 0]})
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "model_error", "message": "the model failed to score this request"}
    }


def test_model_info_describes_the_model() -> None:
    with make_client() as client:
        info = client.get("/v1/model", headers={"X-API-Key": KEY}).json()
    assert info["name"] == "fake"
    assert info["features"] == ["amount", "hour", "distance"]
    assert info["thresholds"] == {"review": 0.5, "decline": 0.9}


def test_scoring_works_below_a_root_path() -> None:
    app = create_app(Settings(api_keys=(KEY,)), scorer=FakeScorer())
    with TestClient(app, root_path="/fraud") as client:
        response = client.post(
            "/fraud/v1/score", json={"features": [0.2, 0, 0]}, headers={"X-API-Key": KEY}
        )
        ready = client.get("/fraud/v1/health/ready")
    assert response.status_code == 200 and ready.status_code == 200


def test_a_repeated_key_header_is_read_as_on_every_route() -> None:
    """The first value counts, on the ASGI scoring route as on Starlette's."""
    with make_client() as client:
        for first, second, status in ((KEY, "bad", 200), ("bad", KEY, 403)):
            headers = [("X-API-Key", first), ("X-API-Key", second)]
            scored = client.post("/v1/score", json={"features": [0.2, 0, 0]}, headers=headers)
            model = client.get("/v1/model", headers=headers)
            assert scored.status_code == model.status_code == status


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD", "OPTIONS"])
def test_other_methods_on_scoring_routes_are_405(method: str) -> None:
    with make_client() as client:
        for path in ("/v1/score", "/v1/score/batch"):
            response = client.request(method, path, headers={"X-API-Key": KEY})
            assert response.status_code == 405
            assert response.headers["allow"] == "POST"


def test_models_lists_every_served_version() -> None:
    with make_client() as client:
        assert client.get("/v1/models").status_code == 401
        models = client.get("/v1/models", headers={"X-API-Key": KEY}).json()["models"]
    assert [(m["name"], m["default_version"]) for m in models] == [("fake", "7")]
    versions = models[0]["versions"]
    assert [(v["name"], v["version"]) for v in versions] == [("fake", "7")]
    assert {"features", "thresholds", "metrics", "created_at", "opset", "runtime", "sha256"} <= set(
        versions[0]
    )


def test_a_version_can_be_pinned_on_v1() -> None:
    with make_client() as client:
        headers = {"X-API-Key": KEY}
        body = {"features": [0.2, 0, 0]}
        pinned = client.post("/v1/score?version=7", json=body, headers=headers)
        assert pinned.status_code == 200 and pinned.json()["model_version"] == "7"
        batch = {"transactions": [body]}
        assert client.post("/v1/score/batch?version=7", json=batch, headers=headers).json()[
            "results"
        ][0]["model_version"] == ("7")
        assert client.get("/v1/model?version=7", headers=headers).json()["version"] == "7"
        missing = client.post("/v1/score?version=8", json=body, headers=headers)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert "no version '8'" in missing.json()["error"]["message"]
        for query in ("model=7", "version=7&version=7", "version", "%ff=1", "version=7&x=1"):
            answer = client.post(f"/v1/score?{query}", json=body, headers=headers)
            assert answer.status_code == 400, query
            assert answer.json()["error"]["code"] == "bad_request"
        # The key is checked before the query string.
        assert client.post("/v1/score?version=8", json=body).status_code == 401


def test_models_reports_the_default_version_and_loads() -> None:
    with make_client() as client:
        listing = client.get("/v1/models", headers={"X-API-Key": KEY}).json()
    assert listing["default_model"] == "fake"
    assert listing["models"][0]["default_version"] == "7"
    assert listing["models"][0]["loads"] == {"ok": 1, "refused": 0}


def test_router_errors_under_v2_use_the_v2_shape() -> None:
    with make_client() as client:
        missing = client.get("/v2/no/such/route")
        lookalike = client.get("/v2x")
        wrong_method = client.get("/v2/models/fake/infer")
        v1_missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)
    assert wrong_method.status_code == 405 and isinstance(wrong_method.json()["error"], str)
    assert v1_missing.json()["error"]["code"] == "not_found"
    assert lookalike.json()["error"]["code"] == "not_found"  # not under /v2


def test_repository_routes_need_an_admin_key() -> None:
    with make_client(admin_keys=("admin-key-123",)) as client:
        for path in ("/v2/repository/index", "/v2/repository/models/fake/load"):
            assert client.post(path).status_code == 401
            assert client.post(path, headers={"X-API-Key": KEY}).status_code == 403
            # A fixed scorer has no repository to look at.
            answer = client.post(path, headers={"X-API-Key": "admin-key-123"})
            assert answer.status_code == 404 and "no model repository" in answer.json()["error"]
    with make_client() as client:  # no admin key configured: the routes are off
        assert client.post("/v2/repository/index").status_code == 401
        answer = client.post("/v2/repository/index", headers={"X-API-Key": KEY})
        assert answer.status_code == 403 and "no admin key" in answer.json()["error"]


class BrokenScorer(FakeScorer):
    """A model that answers something other than a probability for rows whose first
    feature is 7."""

    def __init__(self, bad: float) -> None:
        super().__init__()
        self.bad = bad

    def predict(self, features: np.ndarray) -> np.ndarray:
        scores = super().predict(features)
        scores[features[:, 0] == 7.0] = self.bad
        return scores


@pytest.mark.parametrize("bad", [math.nan, -0.1, 1.5, math.inf])
def test_a_score_that_is_no_probability_is_never_a_decision(bad: float) -> None:
    app = create_app(Settings(api_keys=(KEY,)), scorer=BrokenScorer(bad))
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        single = client.post("/v1/score", json={"features": [7.0, 0.0, 0.0]})
        batch = client.post(
            "/v1/score/batch",
            json={"transactions": [{"features": [0.2, 0, 0]}, {"features": [7.0, 0, 0]}]},
        )
        fine = client.post("/v1/score", json={"features": [0.2, 0.0, 0.0]})
    for answer in (single, batch):
        assert answer.status_code == 500
        assert answer.json()["error"]["code"] == "model_error"
        assert "not a probability" in answer.json()["error"]["message"]
    assert fine.status_code == 200 and fine.json()["fraud_probability"] == pytest.approx(0.2)
