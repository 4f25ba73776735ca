"""The OpenAPI schemas and routes of a model's policy and comparison (server/policy_routes.py)."""

from __future__ import annotations

from server.openapi_schemas import BOOLEAN, STRING, Schema, array, obj, ref
from server.policy import Guard

NAMED = "/v1/models/{name}"
ADMIN_ERRORS = (400, 401, 403, 404, 409, 503)
CHANGE_ERRORS = (401, 403, 404, 409, 503)  # no body: nothing to be malformed
VERSION: Schema = {"type": "string", "pattern": "^(0|[1-9][0-9]*)$"}
NUMBER_OR_NULL: Schema = {"type": ["number", "null"]}

Route = tuple[str, str, str, Schema, tuple[int, ...], str | None]


def policy_routes() -> list[Route]:
    state = ref("PolicyState")
    return [
        ("get", NAMED + "/policy", "A model's policy", state, (401, 403, 404, 503), "AdminKey"),
        ("put", NAMED + "/policy", "Set a model's policy", state, ADMIN_ERRORS, "AdminKey"),
        (
            "delete",
            NAMED + "/policy",
            "Remove it: the newest answers",
            state,
            ADMIN_ERRORS,
            "AdminKey",
        ),
        (
            "post",
            NAMED + "/promote",
            "The canary (else shadow) answers all",
            state,
            ADMIN_ERRORS,
            "AdminKey",
        ),
        (
            "post",
            NAMED + "/rollback",
            "Drop canary and shadow, else back to the previous",
            state,
            ADMIN_ERRORS,
            "AdminKey",
        ),
        (
            "get",
            NAMED + "/comparison",
            "Champion against challengers",
            ref("Comparison"),
            (401, 403, 404, 503),
            "ApiKey",
        ),
    ]


def policy_request_bodies() -> dict[str, Schema]:
    example = {"champion": "4", "canary": "5", "share": 0.1, "shadow": "5"}
    return {
        NAMED + "/policy": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ref("Policy"),
                    "examples": {"canary": {"value": example}},
                }
            },
        }
    }


def policy_schemas() -> dict[str, Schema]:
    defaults = Guard()
    guard = obj(
        {
            "window": {"type": "integer", "minimum": 10, "default": defaults.window},
            "min_compared": {"type": "integer", "minimum": 1, "default": defaults.min_compared},
            "min_agreement": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "default": defaults.min_agreement,
            },
            "max_psi": {"type": "number", "exclusiveMinimum": 0, "default": defaults.max_psi},
            "max_p99_ratio": {
                "type": "number",
                "exclusiveMinimum": 0,
                "default": defaults.max_p99_ratio,
            },
        },
        ("window", "min_compared", "min_agreement", "max_psi", "max_p99_ratio"),
        closed=True,
    )
    policy = obj(
        {
            "champion": VERSION | {"description": "The version that answers."},
            "shadow": VERSION | {"description": "Scored after each answer, never answering."},
            "canary": VERSION | {"description": "Answers `share` of single transactions."},
            "share": {"type": "number", "minimum": 0, "maximum": 1},
            "guard": guard,
            "previous": VERSION | {"description": "Where a rollback without canary returns."},
        },
        ("shadow", "canary", "share", "guard", "previous"),
        closed=True,
    )
    policy["dependentRequired"] = {"share": ["canary"]}
    cells = obj({d: {"type": "integer"} for d in ("APPROVE", "REVIEW", "DECLINE")})
    window = obj(
        {"compared": {"type": "integer"}, "agreement": NUMBER_OR_NULL, "psi": NUMBER_OR_NULL}
    )
    challenger = obj(
        {
            "version": STRING,
            "role": {"enum": ["shadow", "canary"]},
            "champion": STRING,
            "compared": {"type": "integer"},
            "agreement": NUMBER_OR_NULL,
            "decisions": {
                "type": "object",
                "additionalProperties": cells,
                "description": "The champion's decision, then the challenger's.",
            },
            "score_correlation": NUMBER_OR_NULL,
            "psi": NUMBER_OR_NULL,
            "window": window,
            "errors": {"type": "integer"},
            "dropped": {"type": "integer"},
            "after_answer_us_per_row": NUMBER_OR_NULL,
        }
    )
    nullable_text: Schema = {"type": ["string", "null"]}
    state = {
        "model": STRING,
        "policy": {"oneOf": [policy, {"type": "null"}]},
        "applied": BOOLEAN,
        "error": nullable_text,
        "champion": STRING,
    }
    return {
        "Policy": policy,
        "PolicyState": obj(state),
        "Comparison": obj(
            state
            | {
                "challengers": array(challenger),
                "latency": {"type": "object"},
                "rollbacks": {"type": "integer"},
                "events": array({"type": "object"}),
            }
        ),
    }
