"""Every kind of bad input gets a 4xx JSON error from a real uvicorn; serving goes on."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import TEST_API_KEY, LiveServer

JSON = {"Content-Type": "application/json", "X-API-Key": TEST_API_KEY}


def names(live_server: LiveServer) -> list[str]:
    with live_server.client(headers={"X-API-Key": TEST_API_KEY}) as client:
        return list(client.get("/v1/model").json()["features"])


def valid_row(n: int) -> list[float]:
    return [1.0] * n


def body_with(features_text: str, extra: str = "") -> bytes:
    return ('{"transaction_id": "t-1", "features": ' + features_text + extra + "}").encode()


def list_with(n: int, index: int, literal: str) -> str:
    items = ["1.5"] * n
    items[index] = literal
    return "[" + ", ".join(items) + "]"


def named(
    feature_names: list[str], skip: str | None = None, extra: str = "", value: str = "2.0"
) -> str:
    parts = [f'"{name}": {value}' for name in feature_names if name != skip]
    return "{" + ", ".join(parts) + extra + "}"


# (case id, builder(feature names) -> (headers, body), expected status, expected error code)
CASES = [
    ("invalid json", lambda f: (JSON, b'{"features": [1, 2,'), 400, "invalid_json"),
    ("empty body", lambda f: (JSON, b""), 400, "invalid_json"),
    ("not utf-8", lambda f: (JSON, b'{"features": "\xff\xfe"}'), 400, "invalid_json"),
    (
        "text/plain",
        lambda f: (
            {**JSON, "Content-Type": "text/plain"},
            body_with(json.dumps(valid_row(len(f)))),
        ),
        415,
        "unsupported_media_type",
    ),
    (
        "form encoded",
        lambda f: ({**JSON, "Content-Type": "application/x-www-form-urlencoded"}, b"features=1"),
        415,
        "unsupported_media_type",
    ),
    (
        "no content type",
        lambda f: ({"X-API-Key": TEST_API_KEY}, body_with(json.dumps(valid_row(len(f))))),
        415,
        "unsupported_media_type",
    ),
    (
        "body over limit",
        lambda f: (JSON, body_with(json.dumps(valid_row(len(f))), ', "pad": "' + "x" * 5000 + '"')),
        413,
        "payload_too_large",
    ),
    ("missing features", lambda f: (JSON, b'{"transaction_id": "t-1"}'), 422, "invalid_request"),
    ("features null", lambda f: (JSON, body_with("null")), 422, "invalid_request"),
    ("features string", lambda f: (JSON, body_with('"1,2,3"')), 422, "invalid_request"),
    ("features number", lambda f: (JSON, body_with("3")), 422, "invalid_request"),
    (
        "too few",
        lambda f: (JSON, body_with(json.dumps(valid_row(len(f) - 1)))),
        422,
        "invalid_request",
    ),
    (
        "too many",
        lambda f: (JSON, body_with(json.dumps(valid_row(len(f) + 1)))),
        422,
        "invalid_request",
    ),
    ("empty list", lambda f: (JSON, body_with("[]")), 422, "invalid_request"),
    (
        "unknown name",
        lambda f: (JSON, body_with(named(f, extra=', "zzz": 1'))),
        422,
        "invalid_request",
    ),
    ("missing name", lambda f: (JSON, body_with(named(f, skip=f[0]))), 422, "invalid_request"),
    (
        "duplicated name",
        lambda f: (JSON, body_with(named(f, extra=f', "{f[0]}": 9'))),
        400,
        "invalid_json",
    ),
    (
        "duplicated features key",
        lambda f: (JSON, body_with(json.dumps(valid_row(len(f))), ', "features": [1]')),
        400,
        "invalid_json",
    ),
    ("boolean", lambda f: (JSON, body_with(list_with(len(f), 0, "true"))), 422, "invalid_request"),
    ("boolean named", lambda f: (JSON, body_with(named(f, value="false"))), 422, "invalid_request"),
    (
        "string NaN",
        lambda f: (JSON, body_with(list_with(len(f), 1, '"NaN"'))),
        422,
        "invalid_request",
    ),
    (
        "string 1e3",
        lambda f: (JSON, body_with(list_with(len(f), 1, '"1e3"'))),
        422,
        "invalid_request",
    ),
    (
        "null value",
        lambda f: (JSON, body_with(list_with(len(f), 2, "null"))),
        422,
        "invalid_request",
    ),
    (
        "nested list",
        lambda f: (JSON, body_with(list_with(len(f), 0, "[1.0]"))),
        422,
        "invalid_request",
    ),
    (
        "nested object",
        lambda f: (JSON, body_with(list_with(len(f), 0, '{"v": 1}'))),
        422,
        "invalid_request",
    ),
    ("NaN literal", lambda f: (JSON, body_with(list_with(len(f), 0, "NaN"))), 400, "invalid_json"),
    (
        "Infinity literal",
        lambda f: (JSON, body_with(list_with(len(f), 0, "Infinity"))),
        400,
        "invalid_json",
    ),
    (
        "-Infinity literal",
        lambda f: (JSON, body_with(list_with(len(f), 0, "-Infinity"))),
        400,
        "invalid_json",
    ),
    (
        "1e400 overflows float64",
        lambda f: (JSON, body_with(list_with(len(f), 0, "1e400"))),
        400,
        "invalid_json",
    ),
    (
        "1e39 overflows float32",
        lambda f: (JSON, body_with(list_with(len(f), 0, "1e39"))),
        422,
        "invalid_request",
    ),
    (
        "-1e39 overflows float32",
        lambda f: (JSON, body_with(list_with(len(f), 3, "-1e39"))),
        422,
        "invalid_request",
    ),
    (
        "huge integer",
        lambda f: (JSON, body_with(list_with(len(f), 0, "9" * 400))),
        400,
        "invalid_json",
    ),
    (
        "transaction_id number",
        lambda f: (
            JSON,
            json.dumps({"transaction_id": 12, "features": valid_row(len(f))}).encode(),
        ),
        422,
        "invalid_request",
    ),
    (
        "transaction_id list",
        lambda f: (
            JSON,
            json.dumps({"transaction_id": ["a"], "features": valid_row(len(f))}).encode(),
        ),
        422,
        "invalid_request",
    ),
    (
        "transaction_id too long",
        lambda f: (
            JSON,
            json.dumps({"transaction_id": "x" * 129, "features": valid_row(len(f))}).encode(),
        ),
        422,
        "invalid_request",
    ),
    (
        "transaction_id empty",
        lambda f: (
            JSON,
            json.dumps({"transaction_id": "", "features": valid_row(len(f))}).encode(),
        ),
        422,
        "invalid_request",
    ),
    (
        "unknown top-level field",
        lambda f: (JSON, json.dumps({"features": valid_row(len(f)), "feature": [1]}).encode()),
        422,
        "invalid_request",
    ),
    (
        "body is a list",
        lambda f: (JSON, json.dumps(valid_row(len(f))).encode()),
        422,
        "invalid_request",
    ),
    ("body is a string", lambda f: (JSON, b'"features"'), 422, "invalid_request"),
    ("body is null", lambda f: (JSON, b"null"), 422, "invalid_request"),
    # Nesting orjson accepts (up to 1024) but deeper than Python's recursion limit.
    (
        "nested objects 500 deep",
        lambda f: (JSON, b'{"a":' * 500 + b"1" + b"}" * 500),
        422,
        "invalid_request",
    ),
    (
        "nested lists 1000 deep",
        lambda f: (JSON, b"[" * 1000 + b'{"a":1}' + b"]" * 1000),
        422,
        "invalid_request",
    ),
    (
        "nested features 600 deep",
        lambda f: (
            JSON,
            b'{"transaction_id": "a:b", "features": ' + b"[" * 600 + b"]" * 600 + b"}",
        ),
        422,
        "invalid_request",
    ),
    (
        "deeply nested",
        lambda f: (JSON, b'{"features": ' + b"[" * 1500 + b"]" * 1500 + b"}"),
        400,
        "invalid_json",
    ),
]

EXPECTED_FIELDS = {
    "missing features": "features",
    "too few": "features",
    "unknown name": "features.zzz",
    "boolean": "features[0]",
    "string NaN": "features[1]",
    "null value": "features[2]",
    "1e39 overflows float32": "features[0]",
    "-1e39 overflows float32": "features[3]",
    "transaction_id number": "transaction_id",
    "transaction_id too long": "transaction_id",
    "unknown top-level field": "feature",
}


@pytest.mark.parametrize(("case", "build", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_4xx(
    live_server: LiveServer, case: str, build, status: int, code: str
) -> None:
    headers, body = build(names(live_server))
    with live_server.client() as client:
        response = client.post("/v1/score", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    if case in EXPECTED_FIELDS:
        assert error["field"] == EXPECTED_FIELDS[case]


def test_server_keeps_serving_after_every_bad_input(live_server: LiveServer) -> None:
    feature_names = names(live_server)
    with live_server.client() as client:
        for _, build, _, _ in CASES:
            headers, body = build(feature_names)
            assert client.post("/v1/score", content=body, headers=headers).status_code < 500
        response = client.post(
            "/v1/score", headers=JSON, json={"features": valid_row(len(feature_names))}
        )
    assert response.status_code == 200
    assert 0.0 <= response.json()["fraud_probability"] <= 1.0
    assert live_server.process.poll() is None
    assert "Traceback" not in live_server.log.read_text()


def test_chunked_body_over_limit_is_413(live_server: LiveServer) -> None:
    def chunks():
        for _ in range(10):
            yield b" " * 1000  # no Content-Length: the limit must hold while streaming

    with live_server.client() as client:
        response = client.post("/v1/score", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/score", 405),
        ("PUT", "/v1/score", 405),
        ("GET", "/nowhere", 404),
    ],
)
def test_routing_errors_are_json(
    live_server: LiveServer, method: str, path: str, status: int
) -> None:
    with live_server.client() as client:
        response = client.request(method, path, headers=JSON)
    assert response.status_code == status
    assert response.json()["error"]["code"] in {"method_not_allowed", "not_found"}


def test_transport_level_garbage_does_not_kill_the_server(live_server: LiveServer) -> None:
    from urllib.parse import urlparse

    url = urlparse(live_server.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(1024)
    with live_server.client() as client:
        assert client.get("/v1/health/live").status_code == 200


def test_client_leaving_mid_body_leaves_no_traceback(live_server: LiveServer) -> None:
    from urllib.parse import urlparse

    url = urlparse(live_server.base_url)
    request = (
        f"POST /v1/score HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {TEST_API_KEY}\r\nContent-Length: 100\r\n\r\n"
        '{"features": '
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(request)
    with live_server.client() as client:
        assert client.get("/v1/health/live").status_code == 200
        feature_names = names(live_server)
        ok = client.post("/v1/score", headers=JSON, json={"features": [0.0] * len(feature_names)})
    assert ok.status_code == 200
    assert "Traceback" not in live_server.log.read_text()


@pytest.mark.parametrize("extreme", [3.4e38, -3.4e38, 1e30, -1e-45])
def test_extreme_finite_values_still_score(live_server: LiveServer, extreme: float) -> None:
    """Inside float32 but absurd: the graph clips scaled values, so the score stays finite."""
    feature_names = names(live_server)
    with live_server.client() as client:
        for index in (0, len(feature_names) - 1):
            row = [1.0] * len(feature_names)
            row[index] = extreme
            response = client.post("/v1/score", headers=JSON, json={"features": row})
            assert response.status_code == 200, response.text
            assert 0.0 <= response.json()["fraud_probability"] <= 1.0
        response = client.post(
            "/v1/score", headers=JSON, json={"features": [extreme] * len(feature_names)}
        )
    assert response.status_code == 200
    assert 0.0 <= response.json()["fraud_probability"] <= 1.0


def test_long_client_names_are_cut_short_in_errors(live_server: LiveServer) -> None:
    name = "z" * 3000
    with live_server.client() as client:
        response = client.post("/v1/score", headers=JSON, json={"features": [1], name: 1})
    error = response.json()["error"]
    assert response.status_code == 422
    assert len(error["message"]) < 100 and len(error["field"]) <= 40


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'{"transactions": [', JSON, 400),
        (b'{"transactions": [{"features": [NaN]}]}', JSON, 400),
        (b'{"transactions": [{"features": [1]}]}', {**JSON, "Content-Type": "text/plain"}, 415),
        (b'{"transactions": "all"}', JSON, 422),
        (b'{"transactions": [{"features": [true]}]}', JSON, 422),
        (b"[" * 1000 + b"]" * 1000, JSON, 422),
    ],
)
def test_batch_endpoint_bad_input_is_4xx(
    live_server: LiveServer, body: bytes, headers: dict[str, str], status: int
) -> None:
    with live_server.client() as client:
        response = client.post("/v1/score/batch", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert "code" in response.json()["error"]
