"""The OpenAPI document's component schemas, as plain dicts: see server/openapi.py.

With one model served, the schemas name its features and bound every array by its width.
With several, the default model's routes keep those exact schemas and everything shared by
every model (named routes, model descriptions, samples, v2 tensors) takes any width.
"""

from __future__ import annotations

from typing import Any

from server.payloads import FLOAT32_MAX, MAX_TRANSACTION_ID
from server.service import APPROVE, CONTRIBUTIONS, DECLINE, REVIEW
from server.tensors import DATATYPE
from server.v2 import PLATFORM, SERVER_NAME

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
PROBABILITY: Schema = {"type": "number", "minimum": 0, "maximum": 1}
# Reason codes (server/reasons.py): on every answer but APPROVE, and on APPROVE when asked.
REASONS: Schema = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "feature": STRING,
            "value": {"type": ["number", "null"], "description": "As sent; null if missing."},
            "contribution": {
                "type": "number",
                "description": "How far the fraud probability falls with this feature alone at "
                "its training mean; the largest first, only those above 0.",
            },
        },
        "required": ["feature", "value", "contribution"],
    },
    "description": "At most FRAUD_REASONS features that raised the probability most.",
}
EXPLAIN: Schema = BOOLEAN | {"description": "Give the reasons even if the decision is APPROVE."}
HEADER_LENGTH = "Inference-Header-Content-Length"
# Up to this v2 row limit the document states len(data) = n x F exactly: rows_tied_to_data.
EXACT_ROWS = 16


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


def nullable(schema: Schema) -> Schema:
    """A number, or null for a model whose graph fills missing inputs."""
    return {"oneOf": [schema, {"type": "null"}]}


def score_schemas(
    names: tuple[str, ...],
    max_items: int,
    missing_allowed: bool = False,
    any_missing_allowed: bool = False,
    several_models: bool = True,
) -> dict[str, Schema]:
    """The default model's requests (exact), any model's (any width; exact too when the
    default is the only model), and the answers; null values where the default model (or
    any served model) fills missing inputs."""
    n = len(names)
    value = nullable(float32()) if missing_allowed else float32()
    any_value = nullable(float32()) if any_missing_allowed else float32()
    transaction_id = {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_TRANSACTION_ID}
    transaction_id |= {"description": "Echoed back; null if absent."}
    features = {
        "oneOf": [
            array(value, n, n),
            obj(dict.fromkeys(names, value), names if missing_allowed else (), closed=True),
        ],
        "description": f"Finite numbers within float32 range: an array in model order "
        f"({', '.join(names)}) or an object naming every feature.",
    }
    any_features = {
        "oneOf": [
            array(any_value, 1),
            {"type": "object", "additionalProperties": any_value, "minProperties": 1},
        ],
        "description": "Finite numbers within float32 range: an array in the model's order or "
        "an object naming every feature (GET /v1/models/{name} lists them).",
    }
    if not several_models:  # the named routes reach no other model
        any_features = features
    result = {
        "transaction_id": {"type": ["string", "null"]},
        "fraud_probability": PROBABILITY,
        "decision": {"type": "string", "enum": [APPROVE, REVIEW, DECLINE]},
        "model_version": STRING,
        "out_of_distribution": BOOLEAN
        | {"description": "A feature is beyond FRAUD_OOD_Z training standard deviations."},
        "unusual_features": array(STRING, description="Those features, in model order."),
        "reasons": REASONS,
    }
    transactions = array(ref("ScoreRequest"), 1, max_items)
    any_transactions = array(ref("NamedScoreRequest"), 1, max_items)
    return {
        "ScoreRequest": obj(
            {"transaction_id": transaction_id, "features": features, "explain": EXPLAIN},
            ("transaction_id", "explain"),
            closed=True,
        ),
        "NamedScoreRequest": obj(
            {"transaction_id": transaction_id, "features": any_features, "explain": EXPLAIN},
            ("transaction_id", "explain"),
            closed=True,
        ),
        "ScoreResult": obj(result, ("reasons",)),
        "BatchRequest": obj({"transactions": transactions}, closed=True),
        "NamedBatchRequest": obj({"transactions": any_transactions}, closed=True),
        "BatchResponse": obj({"results": array(ref("ScoreResult"), description="In order.")}),
    }


def model_schemas(n_features: int | None) -> dict[str, Schema]:
    """Descriptions, samples and stats; n_features None: several models, any width."""
    low, high = (1, None) if n_features is None else (n_features, n_features)
    thresholds = obj({"review": PROBABILITY, "decline": PROBABILITY})
    described = {
        "name": STRING,
        "version": STRING,
        "features": array(STRING, low, high, description="In model order."),
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
    sample = obj({"features": array(float32(), low, high), "fraud": BOOLEAN})
    return {
        "ModelDescription": obj(described),
        "Stats": obj({"recent": array(point, description="A point a second, oldest first.")}),
        "Samples": obj(
            {
                "feature_names": array(STRING, low, high),
                "rows": array(sample, description="Legitimate and fraudulent, labelled."),
            }
        ),
        "ModelList": obj(
            {
                "default_model": STRING | {"description": "Answers the routes naming none."},
                "models": array(
                    obj(
                        {
                            "name": STRING,
                            "default_version": STRING
                            | {"description": "The newest: served when unpinned."},
                            "versions": array(ref("ModelDescription"), description="Newest first."),
                            "loads": loads
                            | {"description": "Versions loaded and refused since start-up."},
                        }
                    ),
                    description="One a model, the default first.",
                ),
            }
        ),
    }


def v2_schemas(
    n_features: int | None,
    max_rows: int,
    input_name: str | None,
    output_name: str | None,
    missing_allowed: bool = False,
) -> dict[str, Schema]:
    """The v2 tensors: the one model's names and width, or (None) any served model's; null
    values where the model (or, for any model, one of them) fills missing inputs."""
    shape = array({"type": "integer"})
    tensor = obj({"name": STRING, "datatype": STRING, "shape": shape})
    binary_size = obj(
        {"binary_data_size": {"type": "integer", "minimum": 0}}, ("binary_data_size",)
    )
    value = nullable(float32()) if missing_allowed else float32()
    rows = {"type": "integer", "minimum": 1, "maximum": max_rows}
    width = "F" if n_features is None else str(n_features)
    if n_features is None:
        columns: Schema = {"type": "integer", "minimum": 1}
        data = [array(value, 1), array(array(value, 1), 1, max_rows)]
    else:
        columns = {"type": "integer", "const": n_features}
        data = [array(value, n_features, n_features * max_rows)]
        data.append(array(array(value, n_features, n_features), 1, max_rows))
    input_schema = STRING if input_name is None else {"const": input_name}
    infer_input: dict[str, Schema] = {
        "name": input_schema | {"description": "The model's input (see its metadata)."},
        "datatype": {"const": DATATYPE},
        "shape": {"type": "array", "prefixItems": [rows, columns], "items": False, "minItems": 2},
        "data": {"oneOf": data, "description": "Row-major: n x F numbers, or n rows of F."},
        # The parameter says the tensor's bytes follow the JSON header; a JSON body has none
        # after it, so here the parameter is refused (the binary form is described in words).
        "parameters": {
            "type": "object",
            "not": {"required": ["binary_data_size"]},
            "description": f"Other parameters are ignored. binary_data_size belongs to the "
            f"binary extension's form only: n x {width} x 4 bytes of little-endian float32 "
            f"after the JSON header (see {HEADER_LENGTH}), in place of data.",
        },
    }
    exact = {} if n_features is None else rows_tied_to_data(n_features, max_rows, value)
    output_choice = obj(
        {
            "name": (STRING if output_name is None else {"enum": [output_name, CONTRIBUTIONS]})
            | {
                "description": f"The probability, or {CONTRIBUTIONS!r}: each row's F feature "
                "contributions (its probability less its probability with that feature at its "
                "training mean), in the input's order, from one more model run."
            },
            "parameters": obj({"binary_data": BOOLEAN}, ("binary_data",)),
        },
        ("parameters",),
    )
    output = {"name": STRING, "datatype": {"const": DATATYPE}, "shape": shape}
    # A probability is in [0, 1], a contribution (a difference of two) in [-1, 1].
    contribution = {"type": "number", "minimum": -1, "maximum": 1}
    output |= {"data": array(contribution), "parameters": binary_size}
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
            description="data holds n x F values for shape [n, F]; with the binary extension, "
            "parameters.binary_data_size takes its place.",
            **exact,
        ),
        "V2InferRequest": obj(
            {
                "id": STRING | {"description": "Echoed back."},
                "inputs": array(ref("V2InferInput"), 1, 1),
                "outputs": array(output_choice, 1)
                | {
                    "type": ["array", "null"],
                    "description": "null or absent: the probability only.",
                },
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


def rows_tied_to_data(n_features: int, max_rows: int, value: Schema) -> Schema:
    """With a small row limit, one branch a row count n: data holds exactly n x F values
    (flat or nested) for shape [n, F]. JSON Schema cannot relate two fields' sizes in general,
    so beyond EXACT_ROWS the rule is in words only, rather than a document of a thousand
    branches."""
    if max_rows > EXACT_ROWS:
        return {}
    branches = []
    for n in range(1, max_rows + 1):
        flat = array(value, n * n_features, n * n_features)
        nested = array(array(value, n_features, n_features), n, n)
        shape = {"prefixItems": [{"const": n}]}
        branches.append({"properties": {"shape": shape, "data": {"oneOf": [flat, nested]}}})
    return {"oneOf": branches}
