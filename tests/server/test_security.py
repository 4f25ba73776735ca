"""Every route that needs a key refuses a missing or wrong one, and every route that reads a
body refuses one over its limit before reading on. Routes come from the app and the OpenAPI
document, so a new route cannot slip past."""

from __future__ import annotations

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from server.app import create_app
from server.openapi import openapi_document
from server.settings import Settings
from tests.server.fakes import FEATURES, FakeScorer

KEY = "security-test-key-123456"
ADMIN = "security-admin-key-654321"
SETTINGS = Settings(
    api_keys=(KEY,), admin_keys=(ADMIN,), max_body_bytes=2048, max_batch_body_bytes=4096
)
PARAMS = {"{name}": "fake", "{version}": "7"}
SCORING = {
    ("post", "/v1/score"),
    ("post", "/v1/score/batch"),
    ("post", "/v2/models/{name}/infer"),
    ("post", "/v2/models/{name}/versions/{version}/infer"),
}


def concrete(path: str) -> str:
    for placeholder, value in PARAMS.items():
        path = path.replace(placeholder, value)
    return path


def keyed_operations() -> list[tuple[str, str, str]]:
    """(method, path, scheme) for every operation the document says needs a key."""
    document = openapi_document(FEATURES, 1000)
    return [
        (method, path, next(iter(operation["security"][0])))
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and operation.get("security")
    ]


def test_every_served_route_is_described_and_every_scoring_route_needs_a_key() -> None:
    app = create_app(SETTINGS, scorer=FakeScorer())
    served = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    # server/hotpath.py answers these ahead of the router.
    served |= {("post", "/v1/score"), ("post", "/v1/score/batch")}
    served |= {
        ("post", "/v2/models/{name}/infer"),
        ("post", "/v2/models/{name}/versions/{version}/infer"),
    }
    keyed = {(method, path) for method, path, _ in keyed_operations()}
    assert served >= SCORING and keyed >= SCORING


@pytest.mark.parametrize(("method", "path", "scheme"), keyed_operations())
def test_a_keyed_route_refuses_a_missing_or_wrong_key(method: str, path: str, scheme: str) -> None:
    with TestClient(create_app(SETTINGS, scorer=FakeScorer())) as client:
        url = concrete(path)
        missing = client.request(method, url, json={})
        wrong = client.request(method, url, json={}, headers={"X-API-Key": "wrong-key-000"})
        # A scoring key is a wrong key for the admin routes, and the other way round.
        other = client.request(
            method, url, json={}, headers={"X-API-Key": KEY if scheme == "AdminKey" else ADMIN}
        )
    assert (missing.status_code, wrong.status_code, other.status_code) == (401, 403, 403)


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        ("/v1/score", 2048),
        ("/v1/score/batch", 4096),
        ("/v2/models/fake/infer", 4096),
        ("/v2/models/fake/versions/7/infer", 4096),
    ],
)
def test_bodies_over_the_limit_are_refused(path: str, limit: int) -> None:
    body = b'{"pad": "' + b"x" * limit + b'"}'
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    with TestClient(create_app(SETTINGS, scorer=FakeScorer())) as client:
        declared = client.post(path, content=body, headers=headers)
        streamed = client.post(path, content=iter([body[:100], body[100:]]), headers=headers)
    assert declared.status_code == 413 and streamed.status_code == 413
