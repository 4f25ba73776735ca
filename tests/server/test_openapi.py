"""The OpenAPI document: valid OpenAPI 3.1, one entry per served route, schemas that agree
with what the server accepts and answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from server.app import create_app
from server.openapi import PER_MODEL_BODIES, openapi_document
from server.openapi_schemas import EXACT_ROWS
from server.settings import Settings
from tests.server.fakes import FEATURES, FakeScorer

KEY = "k"
MAX_ITEMS = 5
DOCUMENT = openapi_document(FEATURES, MAX_ITEMS)
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def validator(documented: dict[str, Any]) -> Draft202012Validator:
    """A validator for a schema from the document, its $refs resolved within the document."""
    return Draft202012Validator({"allOf": [documented], "components": DOCUMENT["components"]})


def schema(name: str) -> Draft202012Validator:
    return validator({"$ref": f"#/components/schemas/{name}"})


def valid(name: str, instance: Any) -> bool:
    return schema(name).is_valid(instance)


def make_client() -> TestClient:
    app = create_app(Settings(api_keys=(KEY,), max_batch_items=MAX_ITEMS), scorer=FakeScorer())
    return TestClient(app, raise_server_exceptions=False)


def test_the_document_is_valid_openapi() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.1")
    for component in DOCUMENT["components"]["schemas"].values():
        Draft202012Validator.check_schema(component)


def test_the_document_lists_exactly_the_served_routes() -> None:
    app = create_app(Settings(api_keys=(KEY,)), scorer=FakeScorer())
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    # server/hotpath.py's ScoringRoutes, plain ASGI ahead of the router.
    served |= {
        ("/v1/score", "post"),
        ("/v1/score/batch", "post"),
        ("/v1/models/{name}/score", "post"),
        ("/v1/models/{name}/score/batch", "post"),
        ("/v1/events/score", "post"),
        ("/v1/events/score/batch", "post"),
        ("/v1/models/{name}/events/score", "post"),
        ("/v1/models/{name}/events/score/batch", "post"),
        ("/v2/models/{name}/infer", "post"),
        ("/v2/models/{name}/versions/{version}/infer", "post"),
    }
    documented = {
        (path, method)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in METHODS
    }
    assert documented == served


def test_keyed_routes_and_only_they_need_the_api_key() -> None:
    keyed = {
        (path, method)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in METHODS and operation.get("security") == [{"ApiKey": []}]
    }
    assert keyed == {
        ("/v1/model", "get"),
        ("/v1/models", "get"),
        ("/v1/models/{name}", "get"),
        ("/v1/model/samples", "get"),
        ("/v1/models/{name}/samples", "get"),
        ("/v1/models/{name}/score", "post"),
        ("/v1/models/{name}/score/batch", "post"),
        ("/v1/stats", "get"),
        ("/v1/score", "post"),
        ("/v1/score/batch", "post"),
        ("/v1/events/score", "post"),
        ("/v1/events/score/batch", "post"),
        ("/v1/models/{name}/events/score", "post"),
        ("/v1/models/{name}/events/score/batch", "post"),
        ("/v2/models/{name}/infer", "post"),
        ("/v2/models/{name}/versions/{version}/infer", "post"),
        ("/v1/models/{name}/comparison", "get"),
    }
    admin = {
        (path, method)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in METHODS and operation.get("security") == [{"AdminKey": []}]
    }
    assert admin == {
        ("/v2/repository/index", "post"),
        ("/v2/repository/models/{name}/load", "post"),
        ("/v1/models/{name}/policy", "get"),
        ("/v1/models/{name}/policy", "put"),
        ("/v1/models/{name}/policy", "delete"),
        ("/v1/models/{name}/promote", "post"),
        ("/v1/models/{name}/rollback", "post"),
    }
    assert DOCUMENT["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }


def request_examples() -> list[tuple[str, str, Any]]:
    """(path, schema name, example value) for every request body example in the document."""
    found = []
    for path, item in DOCUMENT["paths"].items():
        for method in METHODS & item.keys():
            for media in item[method].get("requestBody", {}).get("content", {}).values():
                name = media["schema"].get("$ref", "").rsplit("/", 1)[-1]
                found += [(path, name, ex["value"]) for ex in media.get("examples", {}).values()]
    return found


def test_the_documents_examples_match_its_schemas() -> None:
    examples = request_examples()
    assert {path for path, _, _ in examples} >= {"/v1/score", "/v1/score/batch"}
    for path, name, example in examples:
        errors = [e.message for e in schema(name).iter_errors(example)]
        assert not errors, (path, errors)


def test_the_score_request_schema() -> None:
    assert valid("ScoreRequest", {"transaction_id": "tx-1", "features": [0.5, 1, -2e5]})
    assert valid("ScoreRequest", {"features": {"amount": 1, "hour": 2.5, "distance": 0}})
    assert valid("ScoreRequest", {"transaction_id": None, "features": [0, 0, 0]})
    assert valid("ScoreRequest", {"transaction_id": "x" * 128, "features": [0, 0, 0]})
    for bad in (
        {},
        {"features": [0, 0]},
        {"features": [0, 0, 0, 0]},
        {"features": [0, 0, True]},
        {"features": [0, 0, "1"]},
        {"features": [0, 0, None]},
        {"features": [0, 0, 1e39]},
        {"features": {"amount": 1, "hour": 2}},
        {"features": {"amount": 1, "hour": 2, "distance": 3, "other": 4}},
        {"features": [0, 0, 0], "extra": 1},
        {"features": [0, 0, 0], "transaction_id": ""},
        {"features": [0, 0, 0], "transaction_id": "x" * 129},
        {"features": [0, 0, 0], "transaction_id": 7},
        [0, 0, 0],
    ):
        assert not valid("ScoreRequest", bad), bad


def test_the_batch_request_schema_bounds_the_items() -> None:
    item = {"features": [0, 0, 0]}
    assert valid("BatchRequest", {"transactions": [item] * MAX_ITEMS})
    assert not valid("BatchRequest", {"transactions": [item] * (MAX_ITEMS + 1)})
    assert not valid("BatchRequest", {"transactions": []})
    assert not valid("BatchRequest", {"transactions": [{"features": [0]}]})


def infer_body(rows: int = 2) -> dict[str, Any]:
    data = [[0.1 * r, 0.0, 1.0] for r in range(rows)]
    tensor = {"name": "features", "datatype": "FP32", "shape": [rows, 3], "data": data}
    return {"id": "r1", "inputs": [tensor]}


def test_the_v2_infer_request_schema() -> None:
    assert valid("V2InferRequest", infer_body())
    flat = infer_body(1)
    flat["inputs"][0]["data"] = [0.1, 0.0, 1.0]
    assert valid("V2InferRequest", flat)
    binary = infer_body(1)
    del binary["inputs"][0]["data"]
    binary["inputs"][0]["parameters"] = {"binary_data_size": 12}
    binary["outputs"] = [{"name": "fraud_probability", "parameters": {"binary_data": True}}]
    # A binary extension header without its bytes is not a valid JSON request: the schema
    # describes the JSON form, and the binary form in words.
    assert not valid("V2InferRequest", binary)
    # Nor is a size beside JSON data, whatever the size (the server refuses both).
    for size in (12, 0, None):
        binary["inputs"][0]["data"] = [0.1, 0.0, 1.0]
        binary["inputs"][0]["parameters"] = {"binary_data_size": size}
        assert not valid("V2InferRequest", binary), size
    binary["inputs"][0]["parameters"] = {"other": "ignored"}
    assert valid("V2InferRequest", binary)
    too_many = infer_body(MAX_ITEMS + 1)
    assert not valid("V2InferRequest", too_many)
    assert not valid("V2InferRequest", infer_body() | {"extra": 1})
    assert not valid("V2InferRequest", infer_body() | {"id": None})


def test_the_v2_schema_ties_the_data_to_the_shape_under_a_small_row_limit() -> None:
    assert MAX_ITEMS <= EXACT_ROWS
    for rows in range(1, MAX_ITEMS + 1):
        nested = infer_body(rows)
        flat = infer_body(rows)
        flat["inputs"][0]["data"] = [v for row in nested["inputs"][0]["data"] for v in row]
        assert valid("V2InferRequest", nested) and valid("V2InferRequest", flat)
        for other in {1, rows - 1, rows + 1} & set(range(1, MAX_ITEMS + 1)) - {rows}:
            for body in (nested, flat):
                mismatched = json.loads(json.dumps(body))
                mismatched["inputs"][0]["shape"] = [other, 3]
                assert not valid("V2InferRequest", mismatched), (rows, other)
    # Over the limit the document says it in words, not in a branch a row count.
    large = openapi_document(FEATURES, EXACT_ROWS + 1)["components"]["schemas"]
    assert "oneOf" not in large["V2InferInput"]


def test_with_one_model_the_named_routes_take_its_exact_schemas() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    assert schemas["NamedScoreRequest"] == schemas["ScoreRequest"]
    assert not valid("NamedScoreRequest", {"features": [0.0]})
    several = openapi_document(FEATURES, MAX_ITEMS, several_models=True, model_names=("a", "b"))
    named = several["components"]["schemas"]["NamedScoreRequest"]
    assert Draft202012Validator(named).is_valid({"features": [0.0]})  # any model's width
    flagged = {
        path
        for path, item in several["paths"].items()
        for method, operation in item.items()
        if method in METHODS and operation.get("x-body-per-model")
    }
    assert flagged == set(PER_MODEL_BODIES)
    assert not any("x-body-per-model" in str(item) for item in DOCUMENT["paths"].values())


def test_the_model_name_is_one_of_the_served_models() -> None:
    document = openapi_document(FEATURES, MAX_ITEMS, model_names=("a", "b"))
    name = document["components"]["parameters"]["Name"]
    assert name["schema"] == {"type": "string", "enum": ["a", "b"]}
    with make_client() as client:
        served = client.get("/openapi.json").json()["components"]["parameters"]["Name"]
        assert served["schema"]["enum"] == ["fake"]
        unknown = client.post(
            "/v1/models/other/score", json={"features": [0, 0, 0]}, headers={"X-API-Key": KEY}
        )
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "name"),
    [
        ("post", "/v1/score", {"transaction_id": "t", "features": [0.7, 0, 0]}, 200, "ScoreResult"),
        ("post", "/v1/score/batch", {"transactions": [{"features": [1, 0, 0]}]}, 200, None),
        ("post", "/v1/score", {"features": [0, 0]}, 422, "V1Error"),
        ("post", "/v1/score", b"{", 400, "V1Error"),
        ("get", "/v1/health/live", None, 200, None),
        ("get", "/v1/health/ready", None, 200, None),
        ("get", "/v1/model", None, 200, "ModelDescription"),
        ("get", "/v1/models", None, 200, "ModelList"),
        ("get", "/v2/health/live", None, 200, None),
        ("get", "/v2/health/ready", None, 200, None),
        ("get", "/v2/models/fake/ready", None, 200, None),
        ("get", "/v2/models/fake/versions/8/ready", None, 404, "V2Error"),
        ("get", "/v2", None, 200, "V2ServerMetadata"),
        ("get", "/v2/models/fake", None, 200, "V2ModelMetadata"),
        ("get", "/v2/models/fake/versions/7", None, 200, "V2ModelMetadata"),
        ("get", "/v2/models/nope", None, 404, "V2Error"),
        ("post", "/v2/models/fake/infer", infer_body(), 200, "V2InferResponse"),
        ("post", "/v2/models/fake/infer", {"inputs": []}, 400, "V2Error"),
    ],
)
def test_the_servers_answers_match_the_documented_schemas(
    method: str, path: str, body: Any, status: int, name: str | None
) -> None:
    headers = {"X-API-Key": KEY}
    with make_client() as client:
        if isinstance(body, bytes):
            headers["Content-Type"] = "application/json"
            response = client.request(method, path, content=body, headers=headers)
        else:
            response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    operation = DOCUMENT["paths"][documented_path(path)][method]
    documented = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    if name is not None:
        assert documented == {"$ref": f"#/components/schemas/{name}"}
    errors = [e.message for e in validator(documented).iter_errors(response.json())]
    assert not errors, errors


def test_the_documented_401_matches_the_server() -> None:
    with make_client() as client:
        v1 = client.post("/v1/score", json={"features": [0, 0, 0]})
        v2 = client.post("/v2/models/fake/infer", json=infer_body())
    assert v1.status_code == v2.status_code == 401
    assert valid("V1Error", v1.json()) and valid("V2Error", v2.json())
    assert (
        "WWW-Authenticate" in DOCUMENT["paths"]["/v1/score"]["post"]["responses"]["401"]["headers"]
    )


def documented_path(path: str) -> str:
    for template in DOCUMENT["paths"]:
        parts, wanted = template.split("/"), path.split("/")
        if len(parts) == len(wanted) and all(
            t == w or (t.startswith("{") and t.endswith("}"))
            for t, w in zip(parts, wanted, strict=True)
        ):
            return template
    raise KeyError(path)


def test_binary_outputs_are_documented_as_the_server_sends_them() -> None:
    body = infer_body() | {"parameters": {"binary_data_output": True}}
    with make_client() as client:
        response = client.post("/v2/models/fake/infer", json=body, headers={"X-API-Key": KEY})
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    assert len(response.content) - length == header["outputs"][0]["parameters"]["binary_data_size"]
    assert schema("V2InferResponse").is_valid(header)
    documented = DOCUMENT["paths"]["/v2/models/{name}/infer"]["post"]["responses"]["200"]
    assert response.headers["content-type"] in documented["content"]
    assert "Inference-Header-Content-Length" in documented["headers"]
