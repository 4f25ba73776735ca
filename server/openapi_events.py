"""The OpenAPI schemas of the raw-event routes (see server/events.py and features/events.py)."""

from __future__ import annotations

from features.events import EVENT_TYPES, FEATURES
from features.reading import FLOAT_MAX, ISO_TIME, MAX_ID_CHARS, MAX_TIMESTAMP
from server.openapi_schemas import BOOLEAN, PROBABILITY, STRING, Schema, array, obj, ref
from server.service import APPROVE, DECLINE, REVIEW

EVENT_ROUTES = (
    "/v1/events/score",
    "/v1/events/score/batch",
    "/v1/models/{name}/events/score",
    "/v1/models/{name}/events/score/batch",
)
EXAMPLE_EVENT = {
    "event_id": "evt-0001",
    "account_id": "acct-42",
    "timestamp": "2026-03-01T21:14:05Z",
    "type": "transfer",
    "amount": 125.0,
    "balance_before": 900.0,
    "payee_id": "acct-77",
    "device_id": "dev-a1",
    "lat": -1.2864,
    "lon": 36.8172,
    "account_opened_at": "2024-11-02T00:00:00Z",
}


def timestamp(description: str, nullable: bool = False) -> Schema:
    forms: list[Schema] = [
        {"type": "number", "minimum": 0, "maximum": MAX_TIMESTAMP},
        {"type": "string", "pattern": f"^{ISO_TIME.pattern}$"},
    ]
    return {
        "oneOf": forms + ([{"type": "null"}] if nullable else []),
        "description": description + ": epoch seconds, or an ISO-8601 date with an optional "
        "time and zone (UTC when it names none), between 1970 and 2200"
        + ("; null or absent: unknown." if nullable else "."),
    }


def event_schemas(max_items: int) -> dict[str, Schema]:
    identifier: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
    fields: dict[str, Schema] = {
        "event_id": identifier | {"description": "Unique per account: a repeat is a replay."},
        "account_id": identifier | {"description": "The sending account."},
        "timestamp": timestamp("When the event happened"),
        "type": {"type": "string", "enum": list(EVENT_TYPES)},
        "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": FLOAT_MAX},
        "balance_before": {"type": "number", "minimum": 0, "maximum": FLOAT_MAX},
        "payee_id": identifier,
        "device_id": identifier,
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "lon": {"type": "number", "minimum": -180, "maximum": 180},
        "account_opened_at": timestamp("When the account was opened", nullable=True),
    }
    wanted = BOOLEAN | {"description": "Also answer the features computed for each event."}
    result = {
        "event_id": STRING,
        "fraud_probability": PROBABILITY,
        "decision": {"type": "string", "enum": [APPROVE, REVIEW, DECLINE]},
        "model_version": STRING,
        "out_of_distribution": BOOLEAN,
        "unusual_features": array(STRING),
        "replayed": BOOLEAN
        | {"description": "The event id was seen before: answered, not counted again."},
        "features": obj({name: {"type": "number"} for name in FEATURES}, closed=True),
    }
    return {
        "EventRequest": obj(
            fields | {"return_features": wanted},
            ("account_opened_at", "return_features"),
            closed=True,
        ),
        "Event": obj(fields, ("account_opened_at",), closed=True),
        "EventBatchRequest": obj(
            {"events": array(ref("Event"), 1, max_items), "return_features": wanted},
            ("return_features",),
            closed=True,
        ),
        "EventResult": obj(result, ("features",)),
        "EventBatchResponse": obj({"results": array(ref("EventResult"), description="In order.")}),
    }


def event_request_bodies() -> dict[str, Schema]:
    single = {
        "required": True,
        "content": {
            "application/json": {
                "schema": ref("EventRequest"),
                "examples": {"event": {"value": EXAMPLE_EVENT}},
            }
        },
    }
    batch = {
        "required": True,
        "content": {
            "application/json": {
                "schema": ref("EventBatchRequest"),
                "examples": {"batch": {"value": {"events": [EXAMPLE_EVENT]}}},
            }
        },
    }
    return {path: batch if path.endswith("/batch") else single for path in EVENT_ROUTES}
