"""The OpenAPI 3.1 document for every route, written by hand as a plain dict.

Hand-written because nothing could infer it: POST /v1/score and /v1/score/batch are plain
ASGI (ScoringRoutes, ahead of Starlette's router) and the other routes are bare Starlette
endpoints that validate their bodies themselves, so there are no typed request models for a
framework to read. The schemas restate the rules of server/payloads.py and server/tensors.py;
tests/server/test_openapi.py checks the document against the spec and the app's routes.
"""

from __future__ import annotations

from typing import Any

from server.payloads import FLOAT32_MAX, MAX_TRANSACTION_ID
from server.service import APPROVE, DECLINE, REVIEW
from server.tensors import DATATYPE
from server.v2 import EXTENSIONS, PLATFORM, SERVER_NAME, SERVER_VERSION

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
PROBABILITY: Schema = {"type": "number", "minimum": 0, "maximum": 1}
BINARY: Schema = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
HEADER_LENGTH = "Inference-Header-Content-Length"
V1_ERRORS = {
    400: "invalid_json (not JSON, empty, NaN/Infinity literals, duplicated keys) or bad_request",
    401: "missing_api_key: no X-API-Key header",
    403: "invalid_api_key: the key is not one of the configured keys",
    413: "payload_too_large: the body is over the configured limit, declared or streamed",
    404: "not_found: the version asked for (?version=) is not served",
    415: "unsupported_media_type: Content-Type is not application/json",
    422: "invalid_request: valid JSON that is not a valid request; `field` names the culprit",
    429: "rate_limited: over this key's FRAUD_RATE_LIMIT_RPS (with Retry-After)",
    500: "model_error: the model failed (never caused by input); internal_error otherwise",
    503: "not_ready (the model is not loaded yet) or overloaded (the queue is full)",
}
METRICS_ERRORS = {
    404: "not_found: metrics are off (FRAUD_METRICS=false)",
}
V2_ERRORS = {
    400: "a bad request: not JSON, a wrong name, shape or datatype, NaN, infinite or "
    "beyond-float32 values, binary sizes that do not match the shape or the body",
    401: "no X-API-Key header",
    403: "the API key is not valid",
    404: "unknown model or version",
    413: "the body is over FRAUD_MAX_BATCH_BODY_BYTES",
    429: "over this key's FRAUD_RATE_LIMIT_RPS (with Retry-After)",
    500: "the model failed",
    503: "the model is not loaded yet, or the server is shedding load",
}
REPOSITORY_ERRORS = {
    400: "the newest version on disk was refused (the message says why); the versions served "
    "before still are",
    401: "no X-API-Key header",
    403: "not an admin key (FRAUD_ADMIN_KEYS), or no admin key is configured",
    404: "unknown model, or the server runs without a repository",
    503: "the model is not loaded yet",
}
ERROR_HEADERS = {401: "WWW-Authenticate", 429: "Retry-After", 503: "Retry-After"}
SCORE_ERRORS = (400, 401, 403, 404, 413, 415, 422, 429, 500, 503)
INFER_ERRORS = (400, 401, 403, 404, 413, 429, 500, 503)
PINNABLE = ("/v1/score", "/v1/score/batch", "/v1/model")


def ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def obj(
    properties: dict[str, Schema],
    optional: tuple[str, ...] = (),
    closed: bool = False,
    **extra: Any,
) -> Schema:
    """An object requiring every property but the optional ones; closed if the server
    rejects unknown fields."""
    required = [name for name in properties if name not in optional]
    schema: Schema = {"type": "object", "properties": properties, "required": required}
    return schema | ({"additionalProperties": False} if closed else {}) | extra


def array(items: Schema, low: int | None = None, high: int | None = None, **extra: Any) -> Schema:
    bounds = {"minItems": low, "maxItems": high}
    schema: Schema = {"type": "array", "items": items}
    return schema | {k: v for k, v in bounds.items() if v is not None} | extra


def float32() -> Schema:
    return {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}


def score_schemas(names: tuple[str, ...], max_items: int) -> dict[str, Schema]:
    n = len(names)
    transaction_id = {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_TRANSACTION_ID}
    features = {
        "oneOf": [array(float32(), n, n), obj(dict.fromkeys(names, float32()), closed=True)],
        "description": f"Finite numbers within float32 range: an array in model order "
        f"({', '.join(names)}) or an object naming every feature.",
    }
    result = {
        "transaction_id": {"type": ["string", "null"]},
        "fraud_probability": PROBABILITY,
        "decision": {"type": "string", "enum": [APPROVE, REVIEW, DECLINE]},
        "model_version": STRING,
        "out_of_distribution": BOOLEAN
        | {"description": "A feature is beyond FRAUD_OOD_Z training standard deviations."},
        "unusual_features": array(STRING, description="Those features, in model order."),
    }
    transactions = array(ref("ScoreRequest"), 1, max_items)
    return {
        "ScoreRequest": obj(
            {"transaction_id": transaction_id | {"description": "Echoed back; null if absent."}}
            | {"features": features},
            ("transaction_id",),
            closed=True,
        ),
        "ScoreResult": obj(result),
        "BatchRequest": obj({"transactions": transactions}, closed=True),
        "BatchResponse": obj({"results": array(ref("ScoreResult"), description="In order.")}),
    }


def model_schemas(n_features: int) -> dict[str, Schema]:
    thresholds = obj({"review": PROBABILITY, "decline": PROBABILITY})
    described = {
        "name": STRING,
        "version": STRING,
        "features": array(STRING, n_features, n_features, description="In model order."),
        "thresholds": thresholds | {"description": "In effect, after any settings override."},
        "metrics": {"type": "object", "description": "Validation and test metrics."},
        "created_at": STRING,
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    }
    described["opset"] = {"type": "integer", "description": "ONNX opset, from the manifest."}
    described["runtime"] = STRING | {"description": 'What runs it, e.g. "onnxruntime 1.20.1".'}
    loads = obj({"ok": {"type": "integer"}, "refused": {"type": "integer"}})
    number_or_null = {"type": ["number", "null"]}
    point = obj({"time": {"type": "number"}, "rps": {"type": "number"}})
    point["properties"] |= {"p50_ms": number_or_null, "p99_ms": number_or_null}
    point["required"] += ["p50_ms", "p99_ms"]
    sample = obj({"features": array(float32(), n_features, n_features), "fraud": BOOLEAN})
    return {
        "ModelDescription": obj(described),
        "Stats": obj({"recent": array(point, description="A point a second, oldest first.")}),
        "Samples": obj(
            {
                "feature_names": array(STRING, n_features, n_features),
                "rows": array(sample, description="Legitimate and fraudulent, labelled."),
            }
        ),
        "ModelList": obj(
            {
                "default_version": STRING | {"description": "The newest: served when unpinned."},
                "models": array(
                    ref("ModelDescription"), description="One a version, newest first."
                ),
                "loads": loads | {"description": "Versions loaded and refused since start-up."},
            }
        ),
    }


def v2_schemas(
    n_features: int, max_rows: int, input_name: str, output_name: str
) -> dict[str, Schema]:
    shape = array({"type": "integer"})
    tensor = obj({"name": STRING, "datatype": STRING, "shape": shape})
    binary_size = obj(
        {"binary_data_size": {"type": "integer", "minimum": 0}}, ("binary_data_size",)
    )
    rows = {"type": "integer", "minimum": 1, "maximum": max_rows}
    columns = {"type": "integer", "const": n_features}
    data = [array(float32(), n_features, n_features * max_rows)]
    data.append(array(array(float32(), n_features, n_features), 1, max_rows))
    infer_input: dict[str, Schema] = {
        "name": {"const": input_name, "description": "The model's input (see its metadata)."},
        "datatype": {"const": DATATYPE},
        "shape": {"type": "array", "prefixItems": [rows, columns], "items": False, "minItems": 2},
        "data": {"oneOf": data, "description": "Row-major: n x F numbers, or n rows of F."},
        "parameters": binary_size
        | {
            "description": f"Binary extension only: binary_data_size = n x {n_features} x 4 "
            f"bytes of little-endian float32 follow the JSON header (see {HEADER_LENGTH}), "
            "in place of data.",
        },
    }
    output_choice = obj(
        {
            "name": {"const": output_name},
            "parameters": obj({"binary_data": BOOLEAN}, ("binary_data",)),
        },
        ("parameters",),
    )
    output = {"name": STRING, "datatype": {"const": DATATYPE}, "shape": shape}
    output |= {"data": array(PROBABILITY), "parameters": binary_size}
    return {
        "V2ServerMetadata": obj(
            {"name": {"const": SERVER_NAME}, "version": STRING, "extensions": array(STRING)}
        ),
        "V2ModelMetadata": obj(
            {"name": STRING, "versions": array(STRING), "platform": {"const": PLATFORM}}
            | {"inputs": array(tensor), "outputs": array(tensor)}
        ),
        "V2InferInput": obj(
            infer_input,
            ("parameters",),
            description="In JSON: data, with n x F values for shape [n, F]. With the binary "
            "extension, parameters.binary_data_size instead of data.",
        ),
        "V2InferRequest": obj(
            {
                "id": STRING | {"description": "Echoed back."},
                "inputs": array(ref("V2InferInput"), 1, 1),
                "outputs": array(output_choice, 1)
                | {"type": ["array", "null"], "description": "null or absent: every output."},
                "parameters": obj({"binary_data_output": BOOLEAN}, ("binary_data_output",)),
            },
            ("id", "outputs", "parameters"),
            closed=True,
        ),
        "V2InferResponse": obj(
            {"id": STRING, "model_name": STRING, "model_version": STRING}
            | {"outputs": array(obj(output, ("data", "parameters")))},
            ("id",),
        ),
        "V2RepositoryIndex": array(
            obj(
                {
                    "name": STRING,
                    "version": STRING,
                    "state": {"enum": ["READY", "UNAVAILABLE"]},
                    "reason": STRING | {"description": "Why a version was refused; else empty."},
                }
            ),
            description="Every version folder known, newest first.",
        ),
        "V2RepositoryLoad": obj(
            {
                "name": STRING,
                "versions": array(STRING, description="Served now, newest (the default) first."),
                "loaded": array(STRING, description="Loaded by this request."),
                "refused": {
                    "type": "object",
                    "additionalProperties": STRING,
                    "description": "Older versions refused by this request, with the reasons.",
                },
            }
        ),
        "V2Error": obj({"error": STRING}),
        "V1Error": obj(
            {"error": obj({"code": STRING, "message": STRING, "field": STRING}, ("field",))}
        ),
    }


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
            "Every served version",
            ref("ModelList"),
            (401, 403, 503),
            "ApiKey",
        ),
        ("post", "/v1/score", "Score a transaction", ref("ScoreResult"), SCORE_ERRORS, "ApiKey"),
        ("post", "/v1/score/batch", "Score a batch", ref("BatchResponse"), SCORE_ERRORS, "ApiKey"),
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
    ]
    for path in (model, version):
        model_ready = obj({"name": STRING, "ready": {"const": True}})
        table += [
            ("get", path, "Model metadata", ref("V2ModelMetadata"), (404, 503), None),
            ("get", path + "/ready", "Model readiness", model_ready, (404, 503), None),
            ("post", path + "/infer", "Score rows", ref("V2InferResponse"), INFER_ERRORS, "ApiKey"),
        ]
    return table


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
    return {
        "/v1/score": {
            "required": True,
            "content": {"application/json": {"schema": ref("ScoreRequest"), "examples": score}},
        },
        "/v1/score/batch": {
            "required": True,
            "content": {"application/json": {"schema": ref("BatchRequest"), "examples": batch}},
        },
        "/v2/models/{name}/infer": infer,
        "/v2/models/{name}/versions/{version}/infer": infer,
    }


def paths(names: tuple[str, ...]) -> dict[str, Schema]:
    bodies = request_bodies(names)
    result: dict[str, Schema] = {}
    for method, path, summary, schema, statuses, key in routes():
        operation: Schema = {"summary": summary, "tags": [path.split("/")[1].split(".")[0]]}
        operation["responses"] = responses(path, schema, statuses)
        if key is not None:
            operation["security"] = [{key: []}]
        if path in PINNABLE:
            operation["parameters"] = [ref("PinnedVersion", "parameters")]
        if path in bodies:
            operation["requestBody"] = bodies[path]
        if path == "/metrics":  # Prometheus text exposition, not JSON
            operation["responses"]["200"]["content"] = {"text/plain": {"schema": STRING}}
        if path.endswith("/infer"):  # JSON, or the binary extension's header + bytes
            operation["responses"]["200"]["content"] |= BINARY
            operation["responses"]["200"]["headers"] = {
                HEADER_LENGTH: ref(HEADER_LENGTH, "headers")
            }
        params = [ref(p.title(), "parameters") for p in ("name", "version") if f"{{{p}}}" in path]
        result[path] = {method: operation} | ({"parameters": params} if params else {})
    return result


def openapi_document(
    feature_names: tuple[str, ...],
    max_batch_items: int,
    input_name: str = "features",
    output_name: str = "fraud_probability",
) -> dict[str, Any]:
    """The document for a model with these features and this batch (and v2 row) limit."""
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
        "paths": paths(feature_names),
        "components": {
            "schemas": score_schemas(feature_names, max_batch_items)
            | model_schemas(len(feature_names))
            | v2_schemas(len(feature_names), max_batch_items, input_name, output_name),
            "parameters": {
                "Name": path_param | {"name": "name"},
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
