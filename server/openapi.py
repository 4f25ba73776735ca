"""The OpenAPI 3.1 document for every route, written by hand as a plain dict.

Hand-written because nothing could infer it: POST /v1/score and /v1/score/batch are plain
ASGI (ScoringRoutes, ahead of Starlette's router) and the other routes are bare Starlette
endpoints that validate their bodies themselves, so there are no typed request models for a
framework to read. The schemas restate the rules of server/payloads.py and server/tensors.py;
tests/server/test_openapi.py checks the document against the spec and the app's routes.
"""

from __future__ import annotations

from typing import Any

from server.openapi_events import EVENT_ROUTES, event_request_bodies, event_schemas
from server.openapi_policy import policy_request_bodies, policy_routes, policy_schemas
from server.openapi_schemas import (
    HEADER_LENGTH,
    STRING,
    Schema,
    model_schemas,
    obj,
    ref,
    score_schemas,
    v2_schemas,
)
from server.v2 import EXTENSIONS, SERVER_NAME, SERVER_VERSION

BINARY: Schema = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
V1_ERRORS = {
    400: "invalid_json (not JSON, empty, NaN/Infinity literals, duplicated keys) or bad_request",
    401: "missing_api_key: no X-API-Key header",
    403: "invalid_api_key: the key is not one of the configured keys; client_not_allowed: the "
    "client's address is outside FRAUD_ALLOWED_CLIENTS",
    409: "conflict: a policy change the served versions do not allow now (a version not "
    "served, nothing to promote or roll back)",
    413: "payload_too_large: the body is over the configured limit, declared or streamed",
    404: "not_found: the model or the version asked for (?version=) is not served, or (on "
    "the event routes) the model does not score raw events",
    415: "unsupported_media_type: Content-Type is not application/json",
    422: "invalid_request: valid JSON that is not a valid request; `field` names the culprit",
    429: "rate_limited: over this key's FRAUD_RATE_LIMIT_RPS (with Retry-After)",
    500: "model_error: the model failed (never caused by input); internal_error otherwise",
    503: "not_ready (the model is not loaded yet), overloaded (the queue is full, or over the "
    "worker's cap on requests in hand), deadline_exceeded (the request waited past its "
    "deadline and was not scored) or state_unavailable (the account state store cannot be "
    "reached)",
}
METRICS_ERRORS = {
    404: "not_found: metrics are off (FRAUD_METRICS=false)",
}
V2_ERRORS = {
    400: "a bad request: not JSON, a wrong name, shape or datatype, NaN, infinite or "
    "beyond-float32 values, binary sizes that do not match the shape or the body",
    401: "no X-API-Key header",
    403: "the API key is not valid, or the client is outside FRAUD_ALLOWED_CLIENTS",
    404: "unknown model or version",
    413: "the body is over FRAUD_MAX_BATCH_BODY_BYTES",
    429: "over this key's FRAUD_RATE_LIMIT_RPS (with Retry-After)",
    500: "the model failed",
    503: "the model is not loaded yet, the server is shedding load, or the request waited "
    "past its deadline",
}
REPOSITORY_ERRORS = {
    400: "the newest version on disk was refused (the message says why); the versions served "
    "before still are",
    401: "no X-API-Key header",
    403: "not an admin key (FRAUD_ADMIN_KEYS, FRAUD_ADMIN_KEY_FILE), or no admin key is configured",
    404: "unknown model, or the server runs without a repository",
    503: "the model is not loaded yet",
}
ERROR_HEADERS = {401: "WWW-Authenticate", 429: "Retry-After", 503: "Retry-After"}
SCORE_ERRORS = (400, 401, 403, 404, 413, 415, 422, 429, 500, 503)
INFER_ERRORS = (400, 401, 403, 404, 413, 429, 500, 503)
NAMED = "/v1/models/{name}"
# With several models, these bodies must fit the model the path names: its width, feature
# names and tensor names (GET /v1/models/{name}, GET /v2/models/{name}).
PER_MODEL_BODIES = (
    NAMED + "/score",
    NAMED + "/score/batch",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
)
PER_MODEL_TEXT = (
    "The body follows the model the path names: its width, feature names and tensor names "
    "(GET /v1/models/{name}, GET /v2/models/{name}). The schema admits any served model's."
)
PINNABLE = (
    "/v1/score",
    "/v1/score/batch",
    "/v1/model",
    NAMED,
    NAMED + "/score",
    NAMED + "/score/batch",
)


def responses(path: str, schema: Schema, statuses: tuple[int, ...]) -> Schema:
    """200 with `schema`, then each error status with its body and headers."""
    v2 = path.startswith("/v2")
    texts, error = (V2_ERRORS, ref("V2Error")) if v2 else (V1_ERRORS, ref("V1Error"))
    if path.startswith("/v2/repository"):
        texts = REPOSITORY_ERRORS
    elif path == "/metrics":
        texts = METRICS_ERRORS
    answers: Schema = {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}}
    }
    for status in statuses:
        answer = {"description": texts[status], "content": {"application/json": {"schema": error}}}
        if status in ERROR_HEADERS:
            answer["headers"] = {ERROR_HEADERS[status]: ref(ERROR_HEADERS[status], "headers")}
        answers[str(status)] = answer
    return answers


def routes() -> list[tuple[str, str, str, Schema, tuple[int, ...], str | None]]:
    """(method, path, summary, 200 body, error statuses, key needed), one per route."""
    model, version = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    ready = obj({"status": {"const": "ready"}, "model": STRING, "model_version": STRING})
    described = (400, 401, 403, 404, 503)
    admin = (401, 403, 404, 503)
    table: list[tuple[str, str, str, Schema, tuple[int, ...], str | None]] = [
        ("get", "/v1/health/live", "Liveness", obj({"status": {"const": "live"}}), (), None),
        ("get", "/v1/health/ready", "Readiness", ready, (503,), None),
        ("get", "/v1/model", "A served version", ref("ModelDescription"), described, "ApiKey"),
        (
            "get",
            "/v1/models",
            "Every served model and version",
            ref("ModelList"),
            (401, 403, 503),
            "ApiKey",
        ),
        ("get", NAMED, "A served version of a model", ref("ModelDescription"), described, "ApiKey"),
        ("post", "/v1/score", "Score a transaction", ref("ScoreResult"), SCORE_ERRORS, "ApiKey"),
        ("post", "/v1/score/batch", "Score a batch", ref("BatchResponse"), SCORE_ERRORS, "ApiKey"),
        (
            "post",
            NAMED + "/score",
            "Score a transaction with a model",
            ref("ScoreResult"),
            SCORE_ERRORS,
            "ApiKey",
        ),
        (
            "post",
            NAMED + "/score/batch",
            "Score a batch with a model",
            ref("BatchResponse"),
            SCORE_ERRORS,
            "ApiKey",
        ),
        ("get", "/v2", "Server metadata", ref("V2ServerMetadata"), (), None),
        ("get", "/v2/health/live", "Liveness", obj({"live": {"const": True}}), (), None),
        ("get", "/v2/health/ready", "Readiness", obj({"ready": {"const": True}}), (503,), None),
        (
            "post",
            "/v2/repository/index",
            "Model versions on disk",
            ref("V2RepositoryIndex"),
            admin,
            "AdminKey",
        ),
        (
            "post",
            "/v2/repository/models/{name}/load",
            "Load new versions now",
            ref("V2RepositoryLoad"),
            (400, *admin),
            "AdminKey",
        ),
        ("get", "/openapi.json", "This document", {"type": "object"}, (), None),
        ("get", "/metrics", "Prometheus metrics", STRING, (404,), None),
        (
            "get",
            "/v1/stats",
            "The last minute of scoring traffic",
            ref("Stats"),
            (401, 403, 404),
            "ApiKey",
        ),
        (
            "get",
            "/v1/model/samples",
            "Test-period rows shipped with the model",
            ref("Samples"),
            (401, 403, 404, 503),
            "ApiKey",
        ),
        (
            "get",
            NAMED + "/samples",
            "Test-period rows shipped with a model",
            ref("Samples"),
            (401, 403, 404, 503),
            "ApiKey",
        ),
    ]
    for path in EVENT_ROUTES:
        batch = path.endswith("/batch")
        summary = "Score raw events" if batch else "Score a raw event"
        answer = ref("EventBatchResponse" if batch else "EventResult")
        table.append(("post", path, summary, answer, SCORE_ERRORS, "ApiKey"))
    for path in (model, version):
        model_ready = obj({"name": STRING, "ready": {"const": True}})
        table += [
            ("get", path, "Model metadata", ref("V2ModelMetadata"), (404, 503), None),
            ("get", path + "/ready", "Model readiness", model_ready, (404, 503), None),
            ("post", path + "/infer", "Score rows", ref("V2InferResponse"), INFER_ERRORS, "ApiKey"),
        ]
    return table + policy_routes()


def request_bodies(names: tuple[str, ...]) -> dict[str, Schema]:
    """Request bodies by path, with examples."""
    array_form = {"transaction_id": "tx-123", "features": [0.0] * len(names)}
    object_form = {"features": dict.fromkeys(names, 0.0)}
    score = {"array": {"value": array_form}, "object": {"value": object_form}}
    batch = {"batch": {"value": {"transactions": [array_form, object_form]}}}
    infer = {
        "required": True,
        "description": f"JSON; or, with the binary tensor extension, the JSON header (its length "
        f"in the {HEADER_LENGTH} request header) followed by the raw tensor bytes.",
        # The binary extension's body (a JSON header, then raw bytes) is described in words:
        # no schema can say where the header ends.
        "content": {"application/json": {"schema": ref("V2InferRequest")}},
    }
    return (
        {
            "/v1/score": {
                "required": True,
                "content": {"application/json": {"schema": ref("ScoreRequest"), "examples": score}},
            },
            "/v1/score/batch": {
                "required": True,
                "content": {"application/json": {"schema": ref("BatchRequest"), "examples": batch}},
            },
            NAMED + "/score": {
                "required": True,
                "content": {"application/json": {"schema": ref("NamedScoreRequest")}},
            },
            NAMED + "/score/batch": {
                "required": True,
                "content": {"application/json": {"schema": ref("NamedBatchRequest")}},
            },
            "/v2/models/{name}/infer": infer,
            "/v2/models/{name}/versions/{version}/infer": infer,
        }
        | event_request_bodies()
        | policy_request_bodies()
    )


def paths(names: tuple[str, ...], several_models: bool = False) -> dict[str, Schema]:
    bodies = request_bodies(names)
    result: dict[str, Schema] = {}
    for method, path, summary, schema, statuses, key in routes():
        operation: Schema = {"summary": summary, "tags": [path.split("/")[1].split(".")[0]]}
        if several_models and path in PER_MODEL_BODIES:
            # No schema can tie a body to the model its path names: said here, in words and
            # as a flag that tools can select the operation by.
            operation["description"] = PER_MODEL_TEXT
            operation["x-body-per-model"] = True
        operation["responses"] = responses(path, schema, statuses)
        if key is not None:
            operation["security"] = [{key: []}]
        if path in PINNABLE:
            operation["parameters"] = [ref("PinnedVersion", "parameters")]
        if path in bodies and method in ("post", "put"):
            operation["requestBody"] = bodies[path]
        if path == "/metrics":  # Prometheus text exposition, not JSON
            operation["responses"]["200"]["content"] = {"text/plain": {"schema": STRING}}
        if path.endswith("/infer"):  # JSON, or the binary extension's header + bytes
            operation["responses"]["200"]["content"] |= BINARY
            operation["responses"]["200"]["headers"] = {
                HEADER_LENGTH: ref(HEADER_LENGTH, "headers")
            }
        params = [ref(p.title(), "parameters") for p in ("name", "version") if f"{{{p}}}" in path]
        # A path may carry several methods (a policy's GET, PUT and DELETE).
        result.setdefault(path, {})[method] = operation
        if params:
            result[path]["parameters"] = params
    return result


def openapi_document(
    feature_names: tuple[str, ...],
    max_batch_items: int,
    input_name: str = "features",
    output_name: str = "fraud_probability",
    several_models: bool = False,
    model_names: tuple[str, ...] = (),
    missing_allowed: bool = False,
    any_missing_allowed: bool = False,
) -> dict[str, Any]:
    """The document for a default model with these features and this batch (and v2 row)
    limit; with `several_models`, what all models share takes any width and names."""
    width = None if several_models else len(feature_names)
    path_param: Schema = {"in": "path", "required": True, "schema": STRING}
    header_length = "The length of the JSON header; raw little-endian float32 bytes follow it."
    return {
        "openapi": "3.1.0",
        "info": {
            "title": SERVER_NAME,
            "version": SERVER_VERSION,
            "description": "Fraud scoring over /v1, and the Open Inference Protocol (KServe v2) "
            f"over /v2 with extensions {', '.join(EXTENSIONS)}. v1 errors are "
            '{"error": {"code", "message", "field"?}}; v2 errors are {"error": "<message>"}. '
            "Routes needing X-API-Key need none when auth is disabled (development only).",
        },
        "paths": paths(feature_names, several_models),
        "components": {
            "schemas": score_schemas(
                feature_names,
                max_batch_items,
                missing_allowed,
                any_missing_allowed,
                several_models,
            )
            | model_schemas(width)
            | event_schemas(max_batch_items)
            | policy_schemas()
            | v2_schemas(
                width,
                max_batch_items,
                None if several_models else input_name,
                None if several_models else output_name,
                any_missing_allowed if several_models else missing_allowed,
            ),
            "parameters": {
                "Name": path_param
                | {"name": "name", "description": "A served model; any other name is a 404."}
                | ({"examples": {n: {"value": n} for n in model_names}} if model_names else {})
                | (
                    {"schema": {"type": "string", "enum": list(model_names)}} if model_names else {}
                ),
                "Version": path_param | {"name": "version"},
                "PinnedVersion": {
                    "in": "query",
                    "name": "version",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    "description": "A served model version; the newest when absent.",
                },
            },
            "headers": {
                "WWW-Authenticate": {"schema": {"const": "ApiKey"}},
                "Retry-After": {"description": "Seconds to wait.", "schema": STRING},
                HEADER_LENGTH: {"description": header_length, "schema": {"type": "integer"}},
            },
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "AdminKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "One of FRAUD_ADMIN_KEYS, which differ from the scoring keys.",
                },
            },
        },
    }
